//! The synthetic **shapes** dataset: coloured circles, squares and triangles (1–6 per image) on
//! plain or striped backgrounds, with tight boxes, categories `"<colour> <shape>"` and a caption
//! that mentions every object. Deterministic: sample `i` of a split depends only on
//! (seed, split, i), so it can be generated anywhere, in any order, at any resolution.

use tch::{Kind, Tensor};

use spatiallock_protocol::trial::Split;

use super::rng::SplitMix64;
use super::{Dataset, Sample};
use crate::ModelError;

const COLOURS: [(&str, [f32; 3]); 4] = [
    ("red", [0.9, 0.15, 0.15]),
    ("green", [0.15, 0.75, 0.2]),
    ("blue", [0.15, 0.3, 0.9]),
    ("yellow", [0.95, 0.85, 0.1]),
];
const SHAPES: [&str; 3] = ["circle", "square", "triangle"];

/// The shapes dataset.
#[derive(Debug, Clone)]
pub struct Shapes {
    count: usize,
    seed: u64,
    split: Split,
    resolution: usize,
    categories: Vec<String>,
}

impl Shapes {
    /// `count` images of `resolution`² pixels.
    pub fn new(count: usize, seed: u64, split: Split, resolution: usize) -> Self {
        let categories = COLOURS
            .iter()
            .flat_map(|(c, _)| SHAPES.iter().map(move |s| format!("{c} {s}")))
            .collect();
        Self {
            count,
            seed,
            split,
            resolution,
            categories,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Obj {
    shape: usize,
    colour: usize,
    // Pixel box.
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Obj {
    fn contains(&self, x: f64, y: f64) -> bool {
        let (w, h) = (self.x1 - self.x0, self.y1 - self.y0);
        let (u, v) = ((x - self.x0) / w, (y - self.y0) / h);
        if !(0.0..=1.0).contains(&u) || !(0.0..=1.0).contains(&v) {
            return false;
        }
        match self.shape {
            0 => (u - 0.5).powi(2) + (v - 0.5).powi(2) <= 0.25,
            1 => true,
            // Apex at the top centre, base along the bottom.
            _ => (u - 0.5).abs() <= 0.5 * v,
        }
    }

    fn iou(&self, o: &Obj) -> f64 {
        let iw = (self.x1.min(o.x1) - self.x0.max(o.x0)).max(0.0);
        let ih = (self.y1.min(o.y1) - self.y0.max(o.y0)).max(0.0);
        let inter = iw * ih;
        let area = |b: &Obj| (b.x1 - b.x0) * (b.y1 - b.y0);
        inter / (area(self) + area(o) - inter)
    }
}

impl Dataset for Shapes {
    fn len(&self) -> usize {
        self.count
    }

    fn categories(&self) -> &[String] {
        &self.categories
    }

    fn image_fingerprint(&self) -> String {
        // Sample i depends only on (seed, split, i, resolution): the count is left out, so a
        // larger split shares the smaller one's images. Bump the version when drawing changes.
        format!("shapes-v1:{}:{:?}:{}", self.seed, self.split, self.resolution)
    }

    fn annotation_fingerprint(&self) -> String {
        // The generator draws pixels and annotations together.
        self.image_fingerprint()
    }

    fn get(&self, index: usize) -> Result<Sample, ModelError> {
        if index >= self.count {
            return Err(ModelError::Input(format!(
                "shapes: index {index} out of range (len {})",
                self.count
            )));
        }
        let split_id = match self.split {
            Split::Train => 1,
            Split::Val => 2,
        };
        let mut rng = SplitMix64::from_parts(&[self.seed, split_id, index as u64]);
        let n = self.resolution as f64;
        let wanted = 1 + rng.below(6);
        let mut objs: Vec<Obj> = Vec::with_capacity(wanted);
        for _ in 0..wanted * 10 {
            if objs.len() == wanted {
                break;
            }
            let size = rng.range(0.18, 0.45) * n;
            let aspect = rng.range(0.8, 1.25);
            let (w, h) = (size * aspect.sqrt(), size / aspect.sqrt());
            let (x0, y0) = (rng.range(0.0, n - w), rng.range(0.0, n - h));
            let o = Obj {
                shape: rng.below(3),
                colour: rng.below(4),
                x0,
                y0,
                x1: x0 + w,
                y1: y0 + h,
            };
            // Keep every object mostly visible.
            if objs.iter().all(|p| p.iou(&o) < 0.15) {
                objs.push(o);
            }
        }
        let bg = [
            rng.range(0.35, 0.65) as f32,
            rng.range(0.35, 0.65) as f32,
            rng.range(0.35, 0.65) as f32,
        ];
        let striped = rng.unit() < 0.5;
        let period = rng.range(3.0, 8.0);
        let res = self.resolution;
        let mut pixels = vec![0f32; 3 * res * res];
        for y in 0..res {
            for x in 0..res {
                let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
                let shade = if striped && ((cx + cy) / period).floor() as i64 % 2 == 0 {
                    0.85
                } else {
                    1.0
                };
                let mut rgb = [bg[0] * shade, bg[1] * shade, bg[2] * shade];
                // Later objects are drawn on top.
                for o in &objs {
                    if o.contains(cx, cy) {
                        rgb = COLOURS[o.colour].1;
                    }
                }
                for c in 0..3 {
                    pixels[c * res * res + y * res + x] = rgb[c] * 2.0 - 1.0;
                }
            }
        }
        // Largest first, as GLIGEN keeps the largest boxes.
        objs.sort_by(|a, b| ((b.x1 - b.x0) * (b.y1 - b.y0)).total_cmp(&((a.x1 - a.x0) * (a.y1 - a.y0))));
        let names: Vec<String> = objs
            .iter()
            .map(|o| format!("{} {}", COLOURS[o.colour].0, SHAPES[o.shape]))
            .collect();
        let caption = match names.as_slice() {
            [one] => format!("a {one}"),
            many => {
                let (last, rest) = many.split_last().unwrap_or((&many[0], &[]));
                format!("a {} and a {last}", rest.join(", a "))
            }
        };
        let image = Tensor::from_slice(&pixels)
            .view([3, res as i64, res as i64])
            .to_kind(Kind::Float);
        Ok(Sample {
            image,
            boxes: objs
                .iter()
                .map(|o| {
                    [
                        (o.x0 / n) as f32,
                        (o.y0 / n) as f32,
                        (o.x1 / n) as f32,
                        (o.y1 / n) as f32,
                    ]
                })
                .collect(),
            labels: objs
                .iter()
                .map(|o| (o.colour * SHAPES.len() + o.shape) as i64)
                .collect(),
            phrases: names,
            caption,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deterministic_and_consistent() {
        let d = Shapes::new(20, 7, Split::Train, 32);
        assert_eq!(d.categories().len(), 12);
        // The plan's cost warnings (mAP from fewer layouts than categories) count on it.
        assert_eq!(
            d.categories().len() as u64,
            spatiallock_protocol::cost::SHAPES_CATEGORIES
        );
        for i in 0..20 {
            let a = d.get(i).unwrap();
            let b = d.get(i).unwrap();
            assert!(a.image.equal(&b.image));
            assert_eq!(a.boxes, b.boxes);
            assert!((1..=6).contains(&a.boxes.len()));
            assert_eq!(a.boxes.len(), a.labels.len());
            for (bx, phrase) in a.boxes.iter().zip(&a.phrases) {
                assert!(bx[0] >= 0.0 && bx[2] <= 1.0 && bx[0] < bx[2] && bx[1] < bx[3]);
                assert!(a.caption.contains(phrase.as_str()), "{} / {phrase}", a.caption);
            }
            assert_eq!(a.image.size(), [3, 32, 32]);
        }
        let val = Shapes::new(20, 7, Split::Val, 32).get(0).unwrap();
        assert!(!val.image.equal(&d.get(0).unwrap().image), "splits differ");
        assert!(d.get(20).is_err());
    }
}
