//! GLIGEN's preprocessing of real images: resize the shorter side to the resolution, centre-crop
//! a square, carry the boxes along (clipped to the crop), drop boxes smaller than 1% of the image
//! or cropped away entirely, keep the 30 largest. (Horizontal flips happen in the trainer.)

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use tch::Tensor;

use sha2::{Digest, Sha256};

use super::{Annotations, Dataset, LoadReport, Sample};
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

    fn annotations(&self, index: usize) -> Result<Annotations, ModelError> {
        let e = entry(&self.entries, index)?;
        // The header is enough for the boxes; the pixels are not decoded.
        let (w, h) = image::image_dimensions(&e.file).map_err(|err| unreadable(&e.file, err))?;
        let (kept, _) = crop_boxes(w, h, &e.objects, self.resolution);
        Ok(annotations_of(e, kept))
    }

    fn image_fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(format!("files-v1 {}\n", self.resolution));
        for e in &self.entries {
            let path = std::path::absolute(&e.file).unwrap_or_else(|_| e.file.clone());
            // Size and modification time: an image replaced in place gets a new fingerprint.
            let stamp = std::fs::metadata(&e.file).ok().map(|m| (m.len(), m.modified().ok()));
            hash.update(format!("{}\0{stamp:?}\n", path.display()));
        }
        hex_digest(hash)
    }

    fn annotation_fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(format!("files-v1 {} {:?}\n", self.resolution, self.categories));
        for e in &self.entries {
            let path = std::path::absolute(&e.file).unwrap_or_else(|_| e.file.clone());
            hash.update(format!("{}\0{:?}\0", path.display(), e.caption));
            for o in &e.objects {
                let bits = o.xywh.map(f32::to_bits);
                hash.update(format!("{bits:?} {} {:?}\0", o.label, o.phrase));
            }
            hash.update("\n");
        }
        hex_digest(hash)
    }
}

fn hex_digest(hash: Sha256) -> String {
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn entry(entries: &[FileEntry], index: usize) -> Result<&FileEntry, ModelError> {
    entries
        .get(index)
        .ok_or_else(|| ModelError::Input(format!("index {index} out of range (len {})", entries.len())))
}

fn annotations_of(e: &FileEntry, kept: Vec<(RawObject, [f32; 4])>) -> Annotations {
    let phrases: Vec<String> = kept.iter().map(|(o, _)| o.phrase.clone()).collect();
    Annotations {
        caption: e.caption.clone().unwrap_or_else(|| caption_from_names(&phrases)),
        boxes: kept.iter().map(|(_, b)| *b).collect(),
        labels: kept.iter().map(|(o, _)| o.label).collect(),
        phrases,
    }
}

fn unreadable(path: &Path, e: image::ImageError) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unreadable image: {e}")),
    }
}

/// Entry `index` of `entries`, read and preprocessed to `resolution`² pixels.
fn load_entry(entries: &[FileEntry], index: usize, resolution: u32) -> Result<Sample, ModelError> {
    let e = entry(entries, index)?;
    let img = read_rgb(&e.file)?;
    let (image, kept, _) = crop_sample(&img, &e.objects, resolution);
    let a = annotations_of(e, kept);
    Ok(Sample {
        image,
        boxes: a.boxes,
        labels: a.labels,
        phrases: a.phrases,
        caption: a.caption,
    })
}

/// Reads an image file as RGB.
pub fn read_rgb(path: &Path) -> Result<image::RgbImage, ModelError> {
    let img = image::open(path).map_err(|e| unreadable(path, e))?;
    Ok(img.to_rgb8())
}

/// The resize and centre crop of a `w`×`h` image to `res`²: the resized size and the crop's
/// top-left corner.
struct CropGeometry {
    resized: (u32, u32),
    offset: (u32, u32),
}

impl CropGeometry {
    fn new(w: u32, h: u32, res: u32) -> Self {
        let (wf, hf) = (w as f32, h as f32);
        let scale = res as f32 / wf.min(hf);
        let (nw, nh) = (
            ((wf * scale).round() as u32).max(res),
            ((hf * scale).round() as u32).max(res),
        );
        Self {
            resized: (nw, nh),
            offset: ((nw - res) / 2, (nh - res) / 2),
        }
    }
}

/// The boxes of `objects` (in the pixels of a `w`×`h` image) after the resize and centre crop
/// to `res`²: normalised xyxy, largest first, without the dropped ones; and how many were dropped.
pub fn crop_boxes(w: u32, h: u32, objects: &[RawObject], res: u32) -> (Vec<(RawObject, [f32; 4])>, usize) {
    let g = CropGeometry::new(w, h, res);
    let (sx, sy) = (g.resized.0 as f32 / w as f32, g.resized.1 as f32 / h as f32);
    let (left, top) = (g.offset.0 as f32, g.offset.1 as f32);
    let r = res as f32;
    let mut kept: Vec<(RawObject, [f32; 4])> = objects
        .iter()
        .filter_map(|o| {
            let [x, y, bw, bh] = o.xywh;
            let x0 = ((x * sx - left) / r).clamp(0.0, 1.0);
            let y0 = ((y * sy - top) / r).clamp(0.0, 1.0);
            let x1 = (((x + bw) * sx - left) / r).clamp(0.0, 1.0);
            let y1 = (((y + bh) * sy - top) / r).clamp(0.0, 1.0);
            ((x1 - x0) * (y1 - y0) >= MIN_BOX_AREA).then(|| (o.clone(), [x0, y0, x1, y1]))
        })
        .collect();
    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    kept.sort_by(|a, b| area(&b.1).total_cmp(&area(&a.1)));
    kept.truncate(MAX_BOXES);
    let dropped = objects.len() - kept.len();
    (kept, dropped)
}

/// Resize + centre-crop `img` to `res`², returning the `[3, res, res]` tensor in [-1, 1] and the
/// boxes (normalised xyxy, largest first) that survive, with how many objects were dropped.
pub fn crop_sample(
    img: &image::RgbImage,
    objects: &[RawObject],
    res: u32,
) -> (Tensor, Vec<(RawObject, [f32; 4])>, usize) {
    let g = CropGeometry::new(img.width(), img.height(), res);
    let resized = image::imageops::resize(img, g.resized.0, g.resized.1, FilterType::Triangle);
    let cropped = image::imageops::crop_imm(&resized, g.offset.0, g.offset.1, res, res).to_image();
    let n = res as usize;
    let mut pixels = vec![0f32; 3 * n * n];
    for (x, y, p) in cropped.enumerate_pixels() {
        for c in 0..3 {
            pixels[c * n * n + y as usize * n + x as usize] = p[c] as f32 / 127.5 - 1.0;
        }
    }
    let image = Tensor::from_slice(&pixels).view([3, res as i64, res as i64]);
    let (kept, dropped) = crop_boxes(img.width(), img.height(), objects, res);
    (image, kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(xywh: [f32; 4], label: i64, phrase: &str) -> RawObject {
        RawObject {
            xywh,
            label,
            phrase: phrase.into(),
        }
    }

    #[test]
    fn boxes_follow_resize_and_centre_crop() {
        // 200×100 image → 32 px: scale 0.32, width 64, crop 16 px on the left.
        let img = image::RgbImage::from_pixel(200, 100, image::Rgb([255, 0, 0]));
        let objs = vec![
            object([50.0, 0.0, 100.0, 100.0], 0, "big"),
            object([0.0, 0.0, 20.0, 20.0], 1, "cropped away"),
            object([100.0, 50.0, 2.0, 2.0], 2, "tiny"),
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

    fn dataset_of(dir: &Path, resolution: u32) -> FileDataset {
        let file = dir.join("wide.png");
        if !file.is_file() {
            image::RgbImage::from_pixel(120, 60, image::Rgb([10, 200, 30]))
                .save(&file)
                .expect("write image");
        }
        let objects = vec![
            object([40.0, 10.0, 40.0, 40.0], 1, "square"),
            object([70.0, 5.0, 20.0, 50.0], 0, "pole"),
            object([0.0, 0.0, 10.0, 10.0], 2, "cropped away"),
        ];
        FileDataset {
            entries: vec![FileEntry {
                file,
                objects,
                caption: None,
            }],
            categories: vec!["pole".into(), "square".into(), "corner".into()],
            resolution,
            report: LoadReport::default(),
        }
    }

    #[test]
    fn annotations_without_pixels_equal_those_of_the_decoded_sample() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dataset_of(dir.path(), 32);
        let full = data.get(0).expect("sample").annotations();
        let light = data.annotations(0).expect("annotations");
        assert_eq!(light, full);
        assert_eq!(
            light.phrases,
            ["square", "pole"],
            "largest first, the cropped one dropped"
        );
        assert_eq!(light.caption, "a square and a pole");
        assert!(data.annotations(1).is_err(), "out of range is an error");
        std::fs::write(&data.entries[0].file, b"not an image").expect("overwrite");
        let err = data.annotations(0).expect_err("unreadable").to_string();
        assert!(err.contains("wide.png"), "{err}");
    }

    #[test]
    fn fingerprints_follow_the_files_the_annotations_and_the_resolution() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dataset_of(dir.path(), 32);
        let (images, annotations) = (data.image_fingerprint(), data.annotation_fingerprint());
        assert_eq!(dataset_of(dir.path(), 32).image_fingerprint(), images);
        assert_eq!(dataset_of(dir.path(), 32).annotation_fingerprint(), annotations);
        assert_ne!(dataset_of(dir.path(), 64).image_fingerprint(), images);
        assert_ne!(dataset_of(dir.path(), 64).annotation_fingerprint(), annotations);

        let mut captioned = dataset_of(dir.path(), 32);
        captioned.entries[0].caption = Some("a green field".into());
        assert_eq!(captioned.image_fingerprint(), images, "a caption is not pixels");
        assert_ne!(captioned.annotation_fingerprint(), annotations);
        let mut moved = dataset_of(dir.path(), 32);
        moved.entries[0].objects[0].xywh[0] += 1.0;
        assert_ne!(moved.annotation_fingerprint(), annotations);
        let mut other = dataset_of(dir.path(), 32);
        other.entries[0].file = dir.path().join("other.png");
        assert_ne!(other.image_fingerprint(), images);

        // An image replaced in place (another size) is other pixels.
        image::RgbImage::from_pixel(64, 64, image::Rgb([0, 0, 0]))
            .save(&data.entries[0].file)
            .expect("replace");
        assert_ne!(data.image_fingerprint(), images);
    }
}
