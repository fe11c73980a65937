//! GLIGEN's preprocessing of real images: resize the shorter side to the resolution, centre-crop
//! a square, carry the boxes along (clipped to the crop), drop boxes smaller than 1% of the image
//! or cropped away entirely, keep the 30 largest. (Horizontal flips happen in the trainer.)

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use tch::Tensor;

use super::{Dataset, LoadReport, Sample};
use crate::error::ModelError;

/// Boxes below this fraction of the image area are dropped.
pub const MIN_BOX_AREA: f32 = 0.01;
/// At most this many boxes per image are kept (largest first).
pub const MAX_BOXES: usize = 30;

/// One annotated object in original image pixels, xywh (COCO convention).
#[derive(Debug, Clone, PartialEq)]
pub struct RawObject {
    /// Left, top, width, height in pixels.
    pub xywh: [f32; 4],
    /// Category index.
    pub label: i64,
    /// Phrase text.
    pub phrase: String,
}

/// One image of a file-based dataset.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// The image file.
    pub file: PathBuf,
    /// Its objects, in original pixels.
    pub objects: Vec<RawObject>,
    /// Its caption; `None` builds one from the kept objects' names.
    pub caption: Option<String>,
}

/// "a person, a dog and a car" from object names.
pub fn caption_from_names(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("a {one}"),
        [rest @ .., last] => format!("a {} and a {last}", rest.join(", a ")),
    }
}

/// A dataset of image files with their objects (COCO, COCO-format and Flickr30k Entities all
/// load into this).
#[derive(Debug)]
pub struct FileDataset {
    /// The images, in file order.
    pub entries: Vec<FileEntry>,
    /// Category names by label.
    pub categories: Vec<String>,
    /// Image side after preprocessing.
    pub resolution: u32,
    /// What loading skipped.
    pub report: LoadReport,
}

impl Dataset for FileDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn categories(&self) -> &[String] {
        &self.categories
    }

    fn get(&self, index: usize) -> Result<Sample, ModelError> {
        load_entry(&self.entries, index, self.resolution)
    }
}

/// Entry `index` of `entries`, read and preprocessed to `resolution`² pixels.
fn load_entry(entries: &[FileEntry], index: usize, resolution: u32) -> Result<Sample, ModelError> {
    let e = entries
        .get(index)
        .ok_or_else(|| ModelError::Input(format!("index {index} out of range (len {})", entries.len())))?;
    let img = read_rgb(&e.file)?;
    let (image, kept, _) = crop_sample(&img, &e.objects, resolution);
    let phrases: Vec<String> = kept.iter().map(|(o, _)| o.phrase.clone()).collect();
    let caption = e.caption.clone().unwrap_or_else(|| caption_from_names(&phrases));
    Ok(Sample {
        image,
        boxes: kept.iter().map(|(_, b)| *b).collect(),
        labels: kept.iter().map(|(o, _)| o.label).collect(),
        phrases,
        caption,
    })
}

/// Reads an image file as RGB.
pub fn read_rgb(path: &Path) -> Result<image::RgbImage, ModelError> {
    let img = image::open(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unreadable image: {e}")),
    })?;
    Ok(img.to_rgb8())
}

/// Resize + centre-crop `img` to `res`², returning the `[3, res, res]` tensor in [-1, 1] and the
/// boxes (normalised xyxy, largest first) that survive, with how many objects were dropped.
pub fn crop_sample(
    img: &image::RgbImage,
    objects: &[RawObject],
    res: u32,
) -> (Tensor, Vec<(RawObject, [f32; 4])>, usize) {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let scale = res as f32 / w.min(h);
    let (nw, nh) = (
        ((w * scale).round() as u32).max(res),
        ((h * scale).round() as u32).max(res),
    );
    let resized = image::imageops::resize(img, nw, nh, FilterType::Triangle);
    let (left, top) = ((nw - res) / 2, (nh - res) / 2);
    let cropped = image::imageops::crop_imm(&resized, left, top, res, res).to_image();
    let n = res as usize;
    let mut pixels = vec![0f32; 3 * n * n];
    for (x, y, p) in cropped.enumerate_pixels() {
        for c in 0..3 {
            pixels[c * n * n + y as usize * n + x as usize] = p[c] as f32 / 127.5 - 1.0;
        }
    }
    let image = Tensor::from_slice(&pixels).view([3, res as i64, res as i64]);
    let (sx, sy) = (nw as f32 / w, nh as f32 / h);
    let r = res as f32;
    let mut kept: Vec<(RawObject, [f32; 4])> = objects
        .iter()
        .filter_map(|o| {
            let [x, y, bw, bh] = o.xywh;
            let x0 = ((x * sx - left as f32) / r).clamp(0.0, 1.0);
            let y0 = ((y * sy - top as f32) / r).clamp(0.0, 1.0);
            let x1 = (((x + bw) * sx - left as f32) / r).clamp(0.0, 1.0);
            let y1 = (((y + bh) * sy - top as f32) / r).clamp(0.0, 1.0);
            ((x1 - x0) * (y1 - y0) >= MIN_BOX_AREA).then(|| (o.clone(), [x0, y0, x1, y1]))
        })
        .collect();
    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    kept.sort_by(|a, b| area(&b.1).total_cmp(&area(&a.1)));
    kept.truncate(MAX_BOXES);
    let dropped = objects.len() - kept.len();
    (image, kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_follow_resize_and_centre_crop() {
        // 200×100 image → 32 px: scale 0.32, width 64, crop 16 px on the left.
        let img = image::RgbImage::from_pixel(200, 100, image::Rgb([255, 0, 0]));
        let objs = vec![
            RawObject {
                xywh: [50.0, 0.0, 100.0, 100.0],
                label: 0,
                phrase: "big".into(),
            },
            RawObject {
                xywh: [0.0, 0.0, 20.0, 20.0],
                label: 1,
                phrase: "cropped away".into(),
            },
            RawObject {
                xywh: [100.0, 50.0, 2.0, 2.0],
                label: 2,
                phrase: "tiny".into(),
            },
        ];
        let (t, kept, dropped) = crop_sample(&img, &objs, 32);
        assert_eq!(t.size(), [3, 32, 32]);
        assert!((t.double_value(&[0, 5, 5]) - 1.0).abs() < 1e-6, "red channel at max");
        assert_eq!(dropped, 2);
        assert_eq!(kept.len(), 1);
        let b = kept[0].1;
        // x: 50·0.32 − 16 = 0 → 0; (150·0.32 − 16)/32 = 1.
        assert!(
            b[0].abs() < 1e-5 && (b[2] - 1.0).abs() < 1e-5 && b[1].abs() < 1e-5 && (b[3] - 1.0).abs() < 1e-5,
            "{b:?}"
        );
    }
}
