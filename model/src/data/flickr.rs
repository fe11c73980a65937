//! Flickr30k Entities: `Annotations/<id>.xml` (boxes per entity id) and `Sentences/<id>.txt`
//! (captions with `[/EN#<id>/<type> phrase]` markup), for the image ids listed in a split file.
//! The first sentence of each image is its caption; each box of an entity mentioned in it
//! becomes an object whose phrase is the mention and whose category is the entity type.
//! Entities without a box (scene, non-visual) are skipped and counted.

use std::collections::HashMap;
use std::path::Path;

use super::coco::is_plain_relative;
use super::preprocess::{FileDataset, FileEntry, RawObject};
use super::LoadReport;
use crate::error::ModelError;

/// Entity types of Flickr30k Entities that have boxes, in label order.
pub const TYPES: [&str; 7] = [
    "people",
    "clothing",
    "bodyparts",
    "animals",
    "vehicles",
    "instruments",
    "other",
];

/// A mention `[/EN#id/type phrase]` in a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    /// Entity id.
    pub entity: String,
    /// First listed type.
    pub kind: String,
    /// The phrase text.
    pub phrase: String,
}

/// Parses one Sentences line → (plain caption, mentions).
pub fn parse_sentence(line: &str) -> Result<(String, Vec<Mention>), String> {
    let mut caption = String::new();
    let mut mentions = Vec::new();
    let mut rest = line.trim();
    while let Some(open) = rest.find('[') {
        caption.push_str(&rest[..open]);
        let close = rest[open..]
            .find(']')
            .ok_or_else(|| format!("unclosed `[` in {line:?}"))?
            + open;
        let inner = &rest[open + 1..close];
        let (tag, phrase) = inner
            .split_once(' ')
            .ok_or_else(|| format!("mention without phrase: [{inner}]"))?;
        let mut parts = tag.trim_start_matches('/').split('/');
        let entity = parts
            .next()
            .and_then(|p| p.strip_prefix("EN#"))
            .ok_or_else(|| format!("bad mention tag `{tag}`"))?;
        let kind = parts.next().unwrap_or("other");
        caption.push_str(phrase);
        mentions.push(Mention {
            entity: entity.to_string(),
            kind: kind.to_string(),
            phrase: phrase.to_string(),
        });
        rest = &rest[close + 1..];
    }
    caption.push_str(rest);
    Ok((caption.split_whitespace().collect::<Vec<_>>().join(" "), mentions))
}

/// Boxes per entity id from an Annotations XML file (xyxy pixels).
pub fn parse_annotation(text: &str) -> Result<HashMap<String, Vec<[f32; 4]>>, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("invalid XML: {e}"))?;
    let mut boxes: HashMap<String, Vec<[f32; 4]>> = HashMap::new();
    for obj in doc.descendants().filter(|n| n.has_tag_name("object")) {
        let Some(bb) = obj.children().find(|n| n.has_tag_name("bndbox")) else {
            continue;
        };
        let coord = |name: &str| -> Result<f32, String> {
            bb.children()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .and_then(|t| t.trim().parse::<f32>().ok())
                .ok_or_else(|| format!("object box without a numeric <{name}>"))
        };
        let b = [coord("xmin")?, coord("ymin")?, coord("xmax")?, coord("ymax")?];
        if b[2] <= b[0] || b[3] <= b[1] {
            return Err(format!("box {b:?} has a non-positive size"));
        }
        for name in obj
            .children()
            .filter(|n| n.has_tag_name("name"))
            .filter_map(|n| n.text())
        {
            boxes.entry(name.trim().to_string()).or_default().push(b);
        }
    }
    Ok(boxes)
}

/// The Flickr30k Entities loader (see [`Flickr30k::open`]).
pub struct Flickr30k;

impl Flickr30k {
    /// Reads the split listed in `ids`.
    ///
    /// Errors: [`ModelError::Io`] for an unreadable file; [`ModelError::Config`] naming the file
    /// for malformed XML or sentences, or an id in `ids` that is not a plain name (absolute, or
    /// with `..`), which would lead out of the annotation, sentence and image folders.
    pub fn open(
        images: &Path,
        annotations: &Path,
        sentences: &Path,
        ids: &Path,
        resolution: u32,
    ) -> Result<FileDataset, ModelError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ModelError::Io {
                path: p.clone(),
                source,
            }
        };
        let list = std::fs::read_to_string(ids).map_err(io(ids))?;
        let mut report = LoadReport::default();
        let mut entries = Vec::new();
        for (line, id) in list.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty()) {
            if !is_plain_relative(id) {
                return Err(ModelError::Config {
                    path: ids.to_path_buf(),
                    message: format!(
                        "line {}: image id `{id}` must be a plain name (no `..`, no leading `/`)",
                        line + 1
                    ),
                });
            }
            let xml_path = annotations.join(format!("{id}.xml"));
            let xml = std::fs::read_to_string(&xml_path).map_err(io(&xml_path))?;
            let boxes = parse_annotation(&xml).map_err(|message| ModelError::Config {
                path: xml_path.clone(),
                message,
            })?;
            let txt_path = sentences.join(format!("{id}.txt"));
            let txt = std::fs::read_to_string(&txt_path).map_err(io(&txt_path))?;
            let first = txt.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let (caption, mentions) = parse_sentence(first).map_err(|message| ModelError::Config {
                path: txt_path.clone(),
                message: format!("line 1: {message}"),
            })?;
            let mut objects = Vec::new();
            for m in mentions {
                let label = TYPES.iter().position(|t| *t == m.kind);
                match (boxes.get(&m.entity), label) {
                    (Some(bs), Some(label)) => objects.extend(bs.iter().map(|b| RawObject {
                        xywh: [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                        label: label as i64,
                        phrase: m.phrase.clone(),
                    })),
                    _ => report.skipped_phrases_without_box += 1,
                }
            }
            if objects.is_empty() {
                report.skipped_images_without_boxes += 1;
                continue;
            }
            entries.push(FileEntry {
                file: images.join(format!("{id}.jpg")),
                objects,
                caption: (!caption.is_empty()).then_some(caption),
            });
        }
        Ok(FileDataset {
            entries,
            categories: TYPES.iter().map(|s| s.to_string()).collect(),
            resolution,
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_parsed_into_caption_and_mentions() {
        let (caption, m) = parse_sentence(
            "[/EN#18/people A child] in [/EN#19/clothing a pink dress] is climbing up [/EN#21/scene an entry way] .",
        )
        .unwrap();
        assert_eq!(caption, "A child in a pink dress is climbing up an entry way .");
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1],
            Mention {
                entity: "19".into(),
                kind: "clothing".into(),
                phrase: "a pink dress".into()
            }
        );
        assert!(parse_sentence("[/EN#1/people broken").is_err());
    }

    #[test]
    fn annotation_boxes_are_grouped_by_entity() {
        let xml = r#"<annotation><filename>1.jpg</filename>
            <object><name>18</name><name>20</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
            <object><name>18</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>
            <object><name>21</name><scene>1</scene></object></annotation>"#;
        let b = parse_annotation(xml).unwrap();
        assert_eq!(b["18"].len(), 2);
        assert_eq!(b["20"], vec![[1.0, 2.0, 30.0, 40.0]]);
        assert!(!b.contains_key("21"));
        assert!(parse_annotation("<annotation><object>").is_err());
    }

    #[test]
    fn ids_cannot_leave_the_dataset_folders() {
        let dir = tempfile::tempdir().unwrap();
        let ids = dir.path().join("train.txt");
        std::fs::write(&ids, "\n../../etc/passwd\n").unwrap();
        let Err(err) = Flickr30k::open(dir.path(), dir.path(), dir.path(), &ids, 32) else {
            panic!("a climbing id was accepted");
        };
        let err = err.to_string();
        assert!(
            err.contains("train.txt") && err.contains("line 2: image id `../../etc/passwd`"),
            "{err}"
        );
    }
}
