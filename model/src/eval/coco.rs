//! COCO bbox evaluation, a port of pycocotools 2.0.x `COCOeval` (iouType "bbox", default
//! parameters) that reproduces its numbers exactly:
//! - thresholds built with numpy's `linspace` formula (`i·step + start`, last value forced);
//! - stable sorts everywhere, fed in pycocotools' orders (GT and detections in file order,
//!   images and categories sorted);
//! - the greedy matcher's strict `<` (a later GT with equal IoU wins), crowd GTs that absorb
//!   detections (IoU over the detection's area), area-range ignores with inclusive bounds;
//! - `maxDets` per image per category; −1 for undefined statistics; GT `area` taken from the
//!   annotation, detection area `w·h`; a matched GT id of 0 counts as unmatched, as there.
//!
//! Detections on images absent from the GT are an error (pycocotools asserts).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading or evaluating COCO files.
#[derive(Debug, thiserror::Error)]
pub enum CocoError {
    /// A file could not be read.
    // The cause is the error source, so `{:#}` prints "path: cause" once.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not the expected JSON, or a record is invalid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the record.
        message: String,
    },
}

/// The 12 statistics' names, in pycocotools' order.
pub const STAT_NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

/// A ground-truth box.
#[derive(Debug, Clone)]
pub struct GtBox {
    /// Annotation id.
    pub id: u64,
    /// Image id.
    pub image_id: u64,
    /// Category id.
    pub category_id: u64,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// Area used for the size buckets (from the file).
    pub area: f64,
    /// Crowd region.
    pub iscrowd: bool,
}

/// A detection.
#[derive(Debug, Clone, Deserialize)]
pub struct Detection {
    /// Image id.
    pub image_id: u64,
    /// Category id.
    pub category_id: u64,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// Confidence.
    pub score: f64,
}

/// A ground-truth set.
#[derive(Debug, Clone, Default)]
pub struct CocoGt {
    /// Image ids, sorted, unique.
    pub images: Vec<u64>,
    /// Category ids, sorted, unique.
    pub categories: Vec<u64>,
    /// Category names by id.
    pub category_names: HashMap<u64, String>,
    /// Annotations in file order.
    pub annotations: Vec<GtBox>,
}

#[derive(Deserialize)]
struct GtFile {
    images: Vec<GtImage>,
    #[serde(default)]
    annotations: Vec<GtAnn>,
    #[serde(default)]
    categories: Vec<GtCat>,
}

#[derive(Deserialize)]
struct GtImage {
    id: u64,
}

#[derive(Deserialize)]
struct GtAnn {
    id: u64,
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    area: Option<f64>,
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct GtCat {
    id: u64,
    #[serde(default)]
    name: String,
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, CocoError> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| CocoError::Invalid {
        path: path.to_path_buf(),
        message: format!("record {}: {}", e.path(), e.inner()),
    })
}

fn read(path: &Path) -> Result<String, CocoError> {
    std::fs::read_to_string(path).map_err(|source| CocoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl CocoGt {
    /// Reads a COCO ground-truth JSON file.
    pub fn load(path: &Path) -> Result<Self, CocoError> {
        Self::from_json(path, &read(path)?)
    }

    /// Parses ground truth (`path` names the source in errors).
    pub fn from_json(path: &Path, text: &str) -> Result<Self, CocoError> {
        let file: GtFile = parse(path, text)?;
        let mut images: Vec<u64> = file.images.iter().map(|i| i.id).collect();
        images.sort_unstable();
        images.dedup();
        let mut categories: Vec<u64> = file.categories.iter().map(|c| c.id).collect();
        categories.sort_unstable();
        categories.dedup();
        let mut annotations = Vec::with_capacity(file.annotations.len());
        for (i, a) in file.annotations.into_iter().enumerate() {
            if a.bbox[2] < 0.0 || a.bbox[3] < 0.0 || a.bbox.iter().any(|v| !v.is_finite()) {
                return Err(CocoError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "annotations[{i}] (id {}): bbox {:?} has a negative or non-finite size",
                        a.id, a.bbox
                    ),
                });
            }
            annotations.push(GtBox {
                id: a.id,
                image_id: a.image_id,
                category_id: a.category_id,
                bbox: a.bbox,
                area: a.area.unwrap_or(a.bbox[2] * a.bbox[3]),
                iscrowd: a.iscrowd != 0,
            });
        }
        let category_names = file.categories.into_iter().map(|c| (c.id, c.name)).collect();
        Ok(Self {
            images,
            categories,
            category_names,
            annotations,
        })
    }
}

/// Reads a detection list (COCO results format) and checks it against `gt`.
pub fn load_detections(path: &Path, gt: &CocoGt) -> Result<Vec<Detection>, CocoError> {
    detections_from_json(path, &read(path)?, gt)
}

/// Parses detections (`path` names the source in errors).
pub fn detections_from_json(path: &Path, text: &str, gt: &CocoGt) -> Result<Vec<Detection>, CocoError> {
    let dets: Vec<Detection> = parse(path, text)?;
    for (i, d) in dets.iter().enumerate() {
        if gt.images.binary_search(&d.image_id).is_err() {
            return Err(CocoError::Invalid {
                path: path.to_path_buf(),
                message: format!("[{i}]: image_id {} is not an image of the ground truth", d.image_id),
            });
        }
        if d.bbox[2] < 0.0 || d.bbox[3] < 0.0 || !d.score.is_finite() || d.bbox.iter().any(|v| !v.is_finite()) {
            return Err(CocoError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "[{i}]: bbox {:?} / score {} invalid (negative size or non-finite)",
                    d.bbox, d.score
                ),
            });
        }
    }
    Ok(dets)
}

/// numpy's `linspace(start, stop, num)`: `i·step + start`, last element exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

const AREA_RANGES: [[f64; 2]; 4] = [[0.0, 1e10], [0.0, 1024.0], [1024.0, 9216.0], [9216.0, 1e10]];
const MAX_DETS: [usize; 3] = [1, 10, 100];

/// The result of an evaluation.
#[derive(Debug, Clone)]
pub struct CocoEval {
    /// The 12 pycocotools statistics (see [`STAT_NAMES`]).
    pub stats: [f64; 12],
    /// `precision[t][r][k][a][m]` flattened in that order (−1 where undefined).
    pub precision: Vec<f64>,
    /// `recall[t][k][a][m]` flattened.
    pub recall: Vec<f64>,
    /// Categories evaluated (sorted ids).
    pub categories: Vec<u64>,
}

/// One (category, image) pair: its GTs, its detections (sorted, at most 100) and their IoUs.
struct Pair<'a> {
    gts: Vec<&'a GtBox>,
    dts: Vec<&'a Detection>,
    ious: Vec<Vec<f64>>,
}

/// Per (image, category, area range): what `evaluateImg` returns.
struct ImgEval {
    /// Detection scores, sorted descending (stable), at most 100.
    dt_scores: Vec<f64>,
    /// `[T][D]`: matched GT id (0 = none).
    dt_matches: Vec<Vec<u64>>,
    /// `[T][D]`.
    dt_ignore: Vec<Vec<bool>>,
    /// Per GT (sorted, non-ignored first).
    gt_ignore: Vec<bool>,
}

fn iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = d[2] * d[3];
    let u = if crowd { da } else { da + g[2] * g[3] - i };
    i / u
}

fn evaluate_img(
    gts: &[&GtBox],
    dts: &[&Detection],
    ious: &[Vec<f64>],
    range: [f64; 2],
    thresholds: &[f64],
) -> Option<ImgEval> {
    if gts.is_empty() && dts.is_empty() {
        return None;
    }
    let ignore: Vec<bool> = gts
        .iter()
        .map(|g| g.iscrowd || g.area < range[0] || g.area > range[1])
        .collect();
    let mut gt_order: Vec<usize> = (0..gts.len()).collect();
    gt_order.sort_by_key(|&i| ignore[i]);
    // `dts` is already sorted by score and truncated to 100 (the rows of `ious`).
    let nd = dts.len();
    let ng = gts.len();
    let t = thresholds.len();
    let mut gt_matched = vec![vec![0u64; ng]; t];
    let mut dt_matches = vec![vec![0u64; nd]; t];
    let mut dt_ignore = vec![vec![false; nd]; t];
    let gt_ig: Vec<bool> = gt_order.iter().map(|&i| ignore[i]).collect();
    let crowd: Vec<bool> = gt_order.iter().map(|&i| gts[i].iscrowd).collect();
    if ng > 0 {
        for (ti, &thr) in thresholds.iter().enumerate() {
            for d in 0..nd {
                let mut best = thr.min(1.0 - 1e-10);
                let mut m: Option<usize> = None;
                for (gi, &g) in gt_order.iter().enumerate() {
                    if gt_matched[ti][gi] > 0 && !crowd[gi] {
                        continue;
                    }
                    if let Some(mi) = m {
                        if !gt_ig[mi] && gt_ig[gi] {
                            break;
                        }
                    }
                    let v = ious[d][g];
                    if v < best {
                        continue;
                    }
                    best = v;
                    m = Some(gi);
                }
                if let Some(mi) = m {
                    dt_ignore[ti][d] = gt_ig[mi];
                    dt_matches[ti][d] = gts[gt_order[mi]].id;
                    gt_matched[ti][mi] = (d + 1) as u64;
                }
            }
        }
    }
    for (ti, row) in dt_ignore.iter_mut().enumerate() {
        for d in 0..nd {
            let a = dts[d].bbox[2] * dts[d].bbox[3];
            if dt_matches[ti][d] == 0 && (a < range[0] || a > range[1]) {
                row[d] = true;
            }
        }
    }
    Some(ImgEval {
        dt_scores: dts.iter().map(|d| d.score).collect(),
        dt_matches,
        dt_ignore,
        gt_ignore: gt_ig,
    })
}

/// Evaluates `dts` against `gt` exactly as pycocotools does.
pub fn evaluate(gt: &CocoGt, dts: &[Detection]) -> CocoEval {
    let iou_thrs = linspace(0.5, 0.95, 10);
    let rec_thrs = linspace(0.0, 1.0, 101);
    let (nt, nr, nk, na, nm) = (
        iou_thrs.len(),
        rec_thrs.len(),
        gt.categories.len(),
        AREA_RANGES.len(),
        MAX_DETS.len(),
    );
    let img_index: HashMap<u64, usize> = gt.images.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let cat_index: HashMap<u64, usize> = gt.categories.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let ni = gt.images.len();
    // (category, image) → boxes, in file order.
    let mut gts: HashMap<(usize, usize), Vec<&GtBox>> = HashMap::new();
    for g in &gt.annotations {
        if let (Some(&k), Some(&i)) = (cat_index.get(&g.category_id), img_index.get(&g.image_id)) {
            gts.entry((k, i)).or_default().push(g);
        }
    }
    let mut dets: HashMap<(usize, usize), Vec<&Detection>> = HashMap::new();
    for d in dts {
        if let (Some(&k), Some(&i)) = (cat_index.get(&d.category_id), img_index.get(&d.image_id)) {
            dets.entry((k, i)).or_default().push(d);
        }
    }

    // evaluateImg for every category, area range and image (categories split across threads).
    let evaluate_category = |k: usize| -> Vec<Option<ImgEval>> {
        let mut out = Vec::with_capacity(na * ni);
        let per_image: Vec<Pair> = (0..ni)
            .map(|i| {
                let g = gts.get(&(k, i)).cloned().unwrap_or_default();
                let mut d = dets.get(&(k, i)).cloned().unwrap_or_default();
                d.sort_by(|a, b| b.score.total_cmp(&a.score));
                d.truncate(MAX_DETS[2]);
                let ious = d
                    .iter()
                    .map(|dd| g.iter().map(|gg| iou(&dd.bbox, &gg.bbox, gg.iscrowd)).collect())
                    .collect();
                Pair { gts: g, dts: d, ious }
            })
            .collect();
        for range in AREA_RANGES {
            for p in &per_image {
                out.push(evaluate_img(&p.gts, &p.dts, &p.ious, range, &iou_thrs));
            }
        }
        out
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let mut evals: Vec<Vec<Option<ImgEval>>> = Vec::with_capacity(nk);
    std::thread::scope(|s| {
        let chunk = nk.div_ceil(threads).max(1);
        let handles: Vec<_> = (0..nk)
            .collect::<Vec<_>>()
            .chunks(chunk)
            .map(|ks| {
                let ks = ks.to_vec();
                let f = &evaluate_category;
                s.spawn(move || ks.into_iter().map(f).collect::<Vec<_>>())
            })
            .collect();
        for h in handles {
            // A panicked thread is a bug: re-raise it rather than score without its categories.
            match h.join() {
                Ok(categories) => evals.extend(categories),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });

    // accumulate()
    let mut precision = vec![-1.0; nt * nr * nk * na * nm];
    let mut recall = vec![-1.0; nt * nk * na * nm];
    let p_at = |t: usize, r: usize, k: usize, a: usize, m: usize| (((t * nr + r) * nk + k) * na + a) * nm + m;
    let r_at = |t: usize, k: usize, a: usize, m: usize| ((t * nk + k) * na + a) * nm + m;
    for (k, cat_evals) in evals.iter().enumerate() {
        for a in 0..na {
            let e: Vec<&ImgEval> = cat_evals[a * ni..(a + 1) * ni].iter().flatten().collect();
            if e.is_empty() {
                continue;
            }
            for (m, &max_det) in MAX_DETS.iter().enumerate() {
                let mut rows: Vec<(f64, usize, usize)> = Vec::new(); // (score, image eval, det)
                for (ei, ev) in e.iter().enumerate() {
                    for d in 0..ev.dt_scores.len().min(max_det) {
                        rows.push((ev.dt_scores[d], ei, d));
                    }
                }
                rows.sort_by(|x, y| y.0.total_cmp(&x.0));
                let npig = e.iter().flat_map(|ev| ev.gt_ignore.iter()).filter(|ig| !**ig).count();
                if npig == 0 {
                    continue;
                }
                let nd = rows.len();
                for t in 0..nt {
                    let (mut tp, mut fp) = (0.0f64, 0.0f64);
                    let mut rc = Vec::with_capacity(nd);
                    let mut pr = Vec::with_capacity(nd);
                    for &(_, ei, d) in &rows {
                        let ev = e[ei];
                        let ignored = ev.dt_ignore[t][d];
                        let matched = ev.dt_matches[t][d] != 0;
                        if matched && !ignored {
                            tp += 1.0;
                        }
                        if !matched && !ignored {
                            fp += 1.0;
                        }
                        rc.push(tp / npig as f64);
                        pr.push(tp / (fp + tp + f64::EPSILON));
                    }
                    recall[r_at(t, k, a, m)] = if nd > 0 { rc[nd - 1] } else { 0.0 };
                    for i in (1..nd).rev() {
                        if pr[i] > pr[i - 1] {
                            pr[i - 1] = pr[i];
                        }
                    }
                    for (ri, &r) in rec_thrs.iter().enumerate() {
                        let pi = rc.partition_point(|&x| x < r);
                        precision[p_at(t, ri, k, a, m)] = if pi < nd { pr[pi] } else { 0.0 };
                    }
                }
            }
        }
    }

    // summarize()
    let mean_valid = |values: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = values.filter(|x| *x > -1.0).collect();
        if v.is_empty() {
            -1.0
        } else {
            numpy_mean(&v)
        }
    };
    let m_index = |md: usize| MAX_DETS.iter().position(|&x| x == md);
    let ap = |iou: Option<f64>, a: usize, md: usize| -> f64 {
        let Some(m) = m_index(md) else { return -1.0 };
        let ts: Vec<usize> = match iou {
            Some(v) => (0..nt).filter(|&t| iou_thrs[t] == v).collect(),
            None => (0..nt).collect(),
        };
        let mut it = ts
            .iter()
            .flat_map(|&t| (0..nr).flat_map(move |r| (0..nk).map(move |k| (t, r, k))))
            .map(|(t, r, k)| precision[p_at(t, r, k, a, m)]);
        mean_valid(&mut it)
    };
    let ar = |a: usize, md: usize| -> f64 {
        let Some(m) = m_index(md) else { return -1.0 };
        let mut it = (0..nt)
            .flat_map(|t| (0..nk).map(move |k| (t, k)))
            .map(|(t, k)| recall[r_at(t, k, a, m)]);
        mean_valid(&mut it)
    };
    let stats = [
        ap(None, 0, 100),
        ap(Some(0.5), 0, MAX_DETS[2]),
        ap(Some(0.75), 0, MAX_DETS[2]),
        ap(None, 1, MAX_DETS[2]),
        ap(None, 2, MAX_DETS[2]),
        ap(None, 3, MAX_DETS[2]),
        ar(0, MAX_DETS[0]),
        ar(0, MAX_DETS[1]),
        ar(0, MAX_DETS[2]),
        ar(1, MAX_DETS[2]),
        ar(2, MAX_DETS[2]),
        ar(3, MAX_DETS[2]),
    ];
    CocoEval {
        stats,
        precision,
        recall,
        categories: gt.categories.clone(),
    }
}

/// numpy's float64 `mean`: pairwise summation (blocks of 8, unrolled, below 128 elements) / n.
fn numpy_mean(v: &[f64]) -> f64 {
    pairwise_sum(v) / v.len() as f64
}

fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_numpy_linspace() {
        let iou = linspace(0.5, 0.95, 10);
        assert_eq!(iou[8], 0.899_999_999_999_999_9);
        assert_eq!(iou[9], 0.95);
        let rec = linspace(0.0, 1.0, 101);
        assert_eq!(rec[35], 0.350_000_000_000_000_03);
        assert_eq!(rec[100], 1.0);
    }

    #[test]
    fn pairwise_sum_handles_all_lengths() {
        for n in [0usize, 1, 7, 8, 9, 127, 128, 129, 1000] {
            let v: Vec<f64> = (0..n).map(|i| i as f64 * 0.1).collect();
            let naive: f64 = v.iter().sum();
            assert!((pairwise_sum(&v) - naive).abs() < 1e-9, "{n}");
        }
    }
}
