//! COCO 2017 (`instances_*.json` + `captions_*.json`) and any COCO-format detection JSON
//! (nuImages exports and the like). Crowd annotations are skipped; an image without captions
//! gets one built from its category names. What was skipped is counted in [`LoadReport`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path};

use serde::Deserialize;

use super::preprocess::{FileDataset, FileEntry, RawObject};
use super::LoadReport;
use crate::error::ModelError;

#[derive(Deserialize)]
struct Instances {
    images: Vec<ImageRec>,
    #[serde(default)]
    annotations: Vec<AnnRec>,
    categories: Vec<CatRec>,
}

#[derive(Deserialize)]
struct ImageRec {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct AnnRec {
    #[serde(default)]
    id: Option<u64>,
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct CatRec {
    id: u64,
    name: String,
}

#[derive(Deserialize)]
struct Captions {
    annotations: Vec<CaptionRec>,
}

#[derive(Deserialize)]
struct CaptionRec {
    image_id: u64,
    caption: String,
}

/// Whether `name` is a relative path of plain names only (no `..`, no root, no drive prefix;
/// `.` is harmless), so that joining it to a folder stays inside that folder. Names from inside
/// dataset files (COCO `file_name`, Flickr ids) must pass this before they are joined.
pub(crate) fn is_plain_relative(name: &str) -> bool {
    let mut named = false;
    for c in Path::new(name).components() {
        match c {
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    named
}

/// The COCO / COCO-format loader (see [`CocoDataset::open`]).
pub struct CocoDataset;

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        message: format!("record {}: {}", e.path(), e.inner()),
    })
}

impl CocoDataset {
    /// Reads `instances` (and `captions` when given) for the images in `images`.
    ///
    /// Errors: [`ModelError::Io`] for an unreadable file; [`ModelError::Config`] naming the
    /// file and record for malformed JSON, an unknown category, a box without area, or a
    /// `file_name` that is not a relative path inside `images` (absolute, or with `..`).
    pub fn open(
        images: &Path,
        instances: &Path,
        captions: Option<&Path>,
        resolution: u32,
    ) -> Result<FileDataset, ModelError> {
        let inst: Instances = read_json(instances)?;
        let mut report = LoadReport::default();
        // Category indices follow ascending COCO ids.
        let mut cats: Vec<&CatRec> = inst.categories.iter().collect();
        cats.sort_by_key(|c| c.id);
        let index_of: HashMap<u64, (i64, String)> = cats
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, (i as i64, c.name.clone())))
            .collect();
        let mut by_image: BTreeMap<u64, Vec<RawObject>> = BTreeMap::new();
        for (i, a) in inst.annotations.iter().enumerate() {
            let record =
                a.id.map(|id| format!("annotation id {id}"))
                    .unwrap_or_else(|| format!("annotations[{i}]"));
            let Some((label, name)) = index_of.get(&a.category_id) else {
                return Err(ModelError::Config {
                    path: instances.to_path_buf(),
                    message: format!("{record}: category_id {} is not in `categories`", a.category_id),
                });
            };
            let [x, y, w, h] = a.bbox;
            if !(w > 0.0 && h > 0.0 && x.is_finite() && y.is_finite()) {
                return Err(ModelError::Config {
                    path: instances.to_path_buf(),
                    message: format!("{record}: bbox {:?} has a non-positive size", a.bbox),
                });
            }
            if a.iscrowd != 0 {
                report.skipped_crowd += 1;
                continue;
            }
            by_image.entry(a.image_id).or_default().push(RawObject {
                xywh: [x as f32, y as f32, w as f32, h as f32],
                label: *label,
                phrase: name.clone(),
            });
        }
        let mut caption_of: HashMap<u64, String> = HashMap::new();
        if let Some(path) = captions {
            let caps: Captions = read_json(path)?;
            for c in caps.annotations {
                // The first caption of each image, in file order.
                caption_of.entry(c.image_id).or_insert(c.caption);
            }
        }
        let mut entries = Vec::with_capacity(inst.images.len());
        for im in &inst.images {
            if !is_plain_relative(&im.file_name) {
                return Err(ModelError::Config {
                    path: instances.to_path_buf(),
                    message: format!(
                        "image id {}: file_name `{}` must be a relative path inside the images folder {} \
                         (no `..`, no leading `/`)",
                        im.id,
                        im.file_name,
                        images.display()
                    ),
                });
            }
            let objects = by_image.remove(&im.id).unwrap_or_default();
            if objects.is_empty() {
                report.skipped_images_without_boxes += 1;
                continue;
            }
            entries.push(FileEntry {
                file: images.join(&im.file_name),
                objects,
                caption: caption_of.remove(&im.id),
            });
        }
        report.skipped_annotations_of_unknown_images = by_image.values().map(Vec::len).sum();
        Ok(FileDataset {
            entries,
            categories: cats.iter().map(|c| c.name.clone()).collect(),
            resolution,
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A COCO-format folder whose one image is named `file_name`; returns (images, instances).
    fn fixture(dir: &Path, file_name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let images = dir.join("images");
        std::fs::create_dir_all(&images).unwrap();
        let instances = dir.join("instances.json");
        let doc = serde_json::json!({
            "images": [{"id": 1, "file_name": file_name}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}],
            "categories": [{"id": 1, "name": "dog"}],
        });
        std::fs::write(&instances, doc.to_string()).unwrap();
        (images, instances)
    }

    #[test]
    fn plain_relative_names_only() {
        for ok in ["a.png", "train/a.png", "./a.png", "a..b.png"] {
            assert!(is_plain_relative(ok), "{ok}");
        }
        for bad in ["../a.png", "../../etc/passwd", "a/../../b", "/etc/passwd", "", "."] {
            assert!(!is_plain_relative(bad), "{bad}");
        }
    }

    #[test]
    fn file_names_cannot_leave_the_images_folder() {
        for bad in ["../../etc/passwd", "/etc/passwd", "sub/../../x.png"] {
            let dir = tempfile::tempdir().unwrap();
            let (images, instances) = fixture(dir.path(), bad);
            let Err(err) = CocoDataset::open(&images, &instances, None, 32) else {
                panic!("`{bad}` was accepted");
            };
            let err = err.to_string();
            assert!(
                err.contains("instances.json") && err.contains(&format!("file_name `{bad}`")),
                "{err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let (images, instances) = fixture(dir.path(), "train/a.png");
        let Ok(d) = CocoDataset::open(&images, &instances, None, 32) else {
            panic!("a plain relative name was refused");
        };
        assert_eq!(d.entries[0].file, images.join("train/a.png"));
    }
}
