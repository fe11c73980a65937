//! Real-data loaders on small generated files: COCO, COCO-format and Flickr30k Entities.

use std::path::Path;

use spatiallock_model::data::coco::CocoDataset;
use spatiallock_model::data::flickr::Flickr30k;
use spatiallock_model::data::Dataset;

fn write_image(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, 128]));
    img.save(path).expect("write image");
}

fn coco_files(dir: &Path, annotations: serde_json::Value) -> (std::path::PathBuf, std::path::PathBuf) {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).expect("mkdir");
    write_image(&images.join("a.png"), 64, 48);
    write_image(&images.join("b.png"), 40, 40);
    let instances = dir.join("instances.json");
    let doc = serde_json::json!({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.png", "width": 40, "height": 40},
                   {"id": 3, "file_name": "none.png", "width": 40, "height": 40}],
        "annotations": annotations,
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
    });
    std::fs::write(&instances, doc.to_string()).expect("write json");
    (images, instances)
}

#[test]
fn coco_reads_boxes_captions_and_counts_skips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (images, instances) = coco_files(
        dir.path(),
        serde_json::json!([
            {"id": 10, "image_id": 1, "category_id": 18, "bbox": [8, 4, 40, 40], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 64, 48], "iscrowd": 1},
            {"id": 12, "image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 20]},
        ]),
    );
    let captions = dir.path().join("captions.json");
    std::fs::write(
        &captions,
        r#"{"annotations": [{"image_id": 1, "caption": "A dog on grass."}]}"#,
    )
    .expect("write");
    let d = CocoDataset::open(&images, &instances, Some(&captions), 32).expect("loads");
    assert_eq!(d.len(), 2);
    assert_eq!(
        d.categories(),
        ["person", "dog"],
        "labels follow ascending category ids"
    );
    assert_eq!(d.report.skipped_crowd, 1);
    assert_eq!(d.report.skipped_images_without_boxes, 1);
    let a = d.get(0).expect("sample");
    assert_eq!(a.image.size(), [3, 32, 32]);
    assert_eq!(a.caption, "A dog on grass.");
    assert_eq!(a.labels, [1]);
    let b = d.get(1).expect("sample");
    assert_eq!(b.caption, "a person", "caption built from category names");
    let bx = b.boxes[0];
    assert!((bx[0] - 0.25).abs() < 1e-5 && (bx[2] - 0.75).abs() < 1e-5, "{bx:?}");
}

#[test]
fn coco_errors_name_the_file_and_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (images, instances) = coco_files(
        dir.path(),
        serde_json::json!([{"id": 7, "image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5]}]),
    );
    let err = CocoDataset::open(&images, &instances, None, 32)
        .expect_err("unknown category")
        .to_string();
    assert!(
        err.contains("instances.json") && err.contains("annotation id 7") && err.contains("category_id 99"),
        "{err}"
    );

    let (images, instances) = coco_files(
        dir.path(),
        serde_json::json!([{"id": 8, "image_id": 1, "category_id": 1, "bbox": [0, 0, -5, 5]}]),
    );
    let err = CocoDataset::open(&images, &instances, None, 32)
        .expect_err("negative size")
        .to_string();
    assert!(
        err.contains("annotation id 8") && err.contains("non-positive size"),
        "{err}"
    );

    std::fs::write(&instances, r#"{"images": [{"id": "x"}]}"#).expect("write");
    let err = CocoDataset::open(&images, &instances, None, 32)
        .expect_err("bad record")
        .to_string();
    assert!(err.contains("instances.json") && err.contains("images[0]"), "{err}");

    let (images, instances) = coco_files(
        dir.path(),
        serde_json::json!([{"id": 9, "image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5]}]),
    );
    let d = CocoDataset::open(&images, &instances, None, 32).expect("loads");
    let err = d.get(0).expect_err("missing image file").to_string();
    assert!(err.contains("none.png"), "{err}");
}

#[test]
fn flickr30k_entities_reads_mentions_and_boxes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for sub in ["images", "Annotations", "Sentences"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    write_image(&root.join("images/100.jpg"), 50, 50);
    std::fs::write(
        root.join("Annotations/100.xml"),
        r#"<annotation><filename>100.jpg</filename><size><width>50</width><height>50</height></size>
           <object><name>1</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
           <object><name>3</name><scene>1</scene></object></annotation>"#,
    )
    .expect("write");
    std::fs::write(
        root.join("Sentences/100.txt"),
        "[/EN#1/people A man] walks through [/EN#3/scene a park] .\nsecond\n",
    )
    .expect("write");
    std::fs::write(root.join("val.txt"), "100\n").expect("write");
    let d = Flickr30k::open(
        &root.join("images"),
        &root.join("Annotations"),
        &root.join("Sentences"),
        &root.join("val.txt"),
        32,
    )
    .expect("loads");
    assert_eq!(d.len(), 1);
    assert_eq!(d.report.skipped_phrases_without_box, 1);
    let s = d.get(0).expect("sample");
    assert_eq!(s.caption, "A man walks through a park .");
    assert_eq!(s.phrases, ["A man"]);
    assert_eq!(s.labels, [0]);

    std::fs::write(root.join("val.txt"), "404\n").expect("write");
    let err = Flickr30k::open(
        &root.join("images"),
        &root.join("Annotations"),
        &root.join("Sentences"),
        &root.join("val.txt"),
        32,
    )
    .expect_err("missing annotation")
    .to_string();
    assert!(err.contains("404.xml"), "{err}");
}
