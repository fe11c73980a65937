//! The synthetic **shapes** dataset: coloured circles, squares and triangles (1–6 per image) on
//! plain or striped backgrounds, with tight boxes, categories `"<colour> <shape>"` and a caption
//! that mentions every object. Deterministic: sample `i` of a split depends only on
//! (seed, split, i), so it can be generated anywhere, in any order, at any resolution.
//!
//! The `simple` variant draws 1–3 larger objects (0.30–0.55 of the side, pairwise IoU at most
//! 0.05) on plain backgrounds only, with the same 12 categories and captions: an easier target
//! for a tiny base.

use tch::{Kind, Tensor};

use spatiallock_protocol::trial::{ShapesVariant, Split};

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
    variant: ShapesVariant,
    categories: Vec<String>,
}

impl Shapes {
    /// `count` images of `resolution`² pixels, of the standard variant.
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
            variant: ShapesVariant::Standard,
            categories,
        }
    }

    /// The same images drawn by `variant`'s rules.
    pub fn with_variant(mut self, variant: ShapesVariant) -> Self {
        self.variant = variant;
        self
    }

    /// Standard layout: 1–6 objects (0.18–0.45 of the side, pairwise IoU < 0.15), a plain or
    /// striped background. Returns (objects, background RGB in [0, 1], stripe period in pixels
    /// when striped). The draw order is the generator's contract: changing it changes the images.
    fn layout_standard(rng: &mut SplitMix64, n: f64) -> (Vec<Obj>, [f32; 3], Option<f64>) {
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
        (objs, bg, striped.then_some(period))
    }

    /// Simple layout: 1–3 objects whose width and height are each 0.30–0.55 of the side,
    /// pairwise IoU at most 0.05 (candidates that overlap more are redrawn, up to 30 tries per
    /// wanted object, so an image may hold fewer than drawn), on a plain background.
    fn layout_simple(rng: &mut SplitMix64, n: f64) -> (Vec<Obj>, [f32; 3], Option<f64>) {
        let wanted = 1 + rng.below(3);
        let mut objs: Vec<Obj> = Vec::with_capacity(wanted);
        for _ in 0..wanted * 30 {
            if objs.len() == wanted {
                break;
            }
            let w = rng.range(0.30, 0.55) * n;
            let h = (w * rng.range(0.85, 1.18)).clamp(0.30 * n, 0.55 * n);
            let (x0, y0) = (rng.range(0.0, n - w), rng.range(0.0, n - h));
            let o = Obj {
                shape: rng.below(3),
                colour: rng.below(4),
                x0,
                y0,
                x1: x0 + w,
                y1: y0 + h,
            };
            if objs.iter().all(|p| p.iou(&o) <= 0.05) {
                objs.push(o);
            }
        }
        let bg = [
            rng.range(0.35, 0.65) as f32,
            rng.range(0.35, 0.65) as f32,
            rng.range(0.35, 0.65) as f32,
        ];
        (objs, bg, None)
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
        // Sample i depends only on (variant, seed, split, i, resolution): the count is left
        // out, so a larger split shares the smaller one's images. Bump the version when drawing
        // changes.
        match self.variant {
            ShapesVariant::Standard => format!("shapes-v1:{}:{:?}:{}", self.seed, self.split, self.resolution),
            ShapesVariant::Simple => format!("shapes-simple-v1:{}:{:?}:{}", self.seed, self.split, self.resolution),
        }
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
        let (mut objs, bg, stripes) = match self.variant {
            ShapesVariant::Standard => Self::layout_standard(&mut rng, n),
            ShapesVariant::Simple => Self::layout_simple(&mut rng, n),
        };
        let res = self.resolution;
        let mut pixels = vec![0f32; 3 * res * res];
        for y in 0..res {
            for x in 0..res {
                let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
                let shade = match stripes {
                    Some(period) if ((cx + cy) / period).floor() as i64 % 2 == 0 => 0.85,
                    _ => 1.0,
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
        // The standard generator's cache key is unchanged since v1 (the simple variant left it
        // alone): existing latent and caption stores stay valid.
        assert_eq!(d.image_fingerprint(), "shapes-v1:7:Train:32");
        assert_eq!(
            d.clone().with_variant(ShapesVariant::Standard).image_fingerprint(),
            format!("shapes-v1:{}:{:?}:{}", 7, Split::Train, 32)
        );
    }

    #[test]
    fn simple_shapes_are_few_large_apart_and_on_plain_backgrounds() {
        tch::set_num_threads(1);
        let res = 32usize;
        let d = Shapes::new(40, 3, Split::Train, res).with_variant(ShapesVariant::Simple);
        assert_eq!(d.categories(), Shapes::new(1, 3, Split::Train, res).categories());
        assert_ne!(
            d.image_fingerprint(),
            Shapes::new(40, 3, Split::Train, res).image_fingerprint()
        );
        assert_eq!(d.image_fingerprint(), d.annotation_fingerprint());
        let mut counts = [0usize; 4];
        for i in 0..40 {
            let a = d.get(i).unwrap();
            let b = d.get(i).unwrap();
            assert!(a.image.equal(&b.image), "deterministic");
            assert_eq!((&a.boxes, &a.caption), (&b.boxes, &b.caption));
            assert!((1..=3).contains(&a.boxes.len()), "{} objects", a.boxes.len());
            counts[a.boxes.len()] += 1;
            assert_eq!(a.boxes.len(), a.labels.len());
            for (k, bx) in a.boxes.iter().enumerate() {
                for side in [bx[2] - bx[0], bx[3] - bx[1]] {
                    assert!((0.30 - 1e-6..=0.55 + 1e-6).contains(&side), "side {side}");
                }
                assert!(bx[0] >= 0.0 && bx[1] >= 0.0 && bx[2] <= 1.0 && bx[3] <= 1.0);
                for other in &a.boxes[..k] {
                    let iw = (bx[2].min(other[2]) - bx[0].max(other[0])).max(0.0);
                    let ih = (bx[3].min(other[3]) - bx[1].max(other[1])).max(0.0);
                    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
                    let iou = iw * ih / (area(bx) + area(other) - iw * ih);
                    assert!(iou <= 0.05 + 1e-6, "IoU {iou}");
                }
                assert!(a.caption.contains(a.phrases[k].as_str()));
            }
            // Every pixel outside all boxes is the one background colour.
            let img = a.image.view([3, -1]);
            let img: Vec<Vec<f32>> = (0..3).map(|c| Vec::<f32>::try_from(img.get(c)).unwrap()).collect();
            let mut background: Option<[f32; 3]> = None;
            for y in 0..res {
                for x in 0..res {
                    let (u, v) = ((x as f32 + 0.5) / res as f32, (y as f32 + 0.5) / res as f32);
                    if a.boxes.iter().any(|b| u >= b[0] && u <= b[2] && v >= b[1] && v <= b[3]) {
                        continue;
                    }
                    let p = [img[0][y * res + x], img[1][y * res + x], img[2][y * res + x]];
                    assert_eq!(*background.get_or_insert(p), p, "pixel ({x}, {y})");
                }
            }
            assert!(background.is_some(), "some background shows");
        }
        assert!(counts[1] > 0 && counts[2] > 0 && counts[3] > 0, "{counts:?}");
        // Other splits and variants draw other images.
        let standard = Shapes::new(40, 3, Split::Train, res).get(0).unwrap();
        assert!(!standard.image.equal(&d.get(0).unwrap().image));
    }
}
