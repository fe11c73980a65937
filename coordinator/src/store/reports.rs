//! Experiment reports: one row per (trial, validation dataset) with our numbers beside the
//! paper's, and a summary over seeds ([`summary`]), as JSON, Markdown or CSV.

pub mod summary;

use indexmap::IndexMap;
use serde_json::Value;
use spatiallock_protocol::api::{AugmentScores, JobState, Report, ReportRow};
use spatiallock_protocol::spec::Reference;
use spatiallock_protocol::JobKind;

use super::{Store, StoreError};

impl Store {
    /// The report of an experiment.
    pub async fn report(&self, experiment: &str) -> Result<Report, StoreError> {
        let (name, axes) = self.experiment_axes(experiment).await?;
        let trials = self.list_trials(experiment, None, &IndexMap::new()).await?;
        let metrics = self.latest_metrics(experiment).await?;
        let (jobs, _) = self
            .list_jobs(
                &super::JobFilter {
                    experiment: Some(experiment.to_string()),
                    ..Default::default()
                },
                0,
                i64::MAX / 2,
            )
            .await?;
        let mut rows = Vec::new();
        for trial in trials {
            // Noop grids have no evaluation: one row per trial from its last job.
            let row_jobs = if trial.eval_jobs.is_empty() {
                trial.model_job.iter().cloned().collect()
            } else {
                trial.eval_jobs.clone()
            };
            // The trial's detector augmentation, shown on its first row.
            let mut augmentation = jobs
                .iter()
                .find(|j| j.kind == JobKind::AugmentDetector && j.trials.contains(&trial.index))
                .map(|j| {
                    let key = j.id.strip_prefix(&format!("{experiment}.")).unwrap_or(&j.id);
                    let get = |n: &str| metrics.get(key).and_then(|m| m.get(n)).copied();
                    AugmentScores {
                        map_real: get("detector_map_real"),
                        map_augmented: get("detector_map_augmented"),
                        map_gain: get("detector_map_gain"),
                        synthetic_images: get("synthetic_images")
                            .filter(|n| n.is_finite() && *n >= 0.0)
                            .map(|n| n as u64),
                        state: j.state,
                    }
                });
            for key in row_jobs {
                let job = jobs.iter().find(|j| j.id == format!("{experiment}.{key}"));
                let m = metrics.get(&key);
                let get = |n: &str| m.and_then(|m| m.get(n)).copied();
                let (fid, fid_kind) = match (get("fid"), get("fd_detector")) {
                    (Some(f), _) => (Some(f), Some("fid".to_string())),
                    (None, Some(f)) => (Some(f), Some("fd_detector".to_string())),
                    (None, None) => (None, None),
                };
                rows.push(ReportRow {
                    trial: trial.index,
                    axes: trial.axes.clone(),
                    // Evaluation labels end in "on <dataset>".
                    val: job
                        .map(|j| j.label.rsplit(" on ").next().unwrap_or(&j.label).to_string())
                        .unwrap_or_default(),
                    state: job.map_or(JobState::Blocked, |j| j.state),
                    ours: Reference {
                        fid,
                        map: get("map"),
                        ap50: get("ap50"),
                        ap75: get("ap75"),
                        infer_s: get("inference_s"),
                        map_gain: None,
                    },
                    fid_kind,
                    fid_images: get("fd_images")
                        .filter(|n| n.is_finite() && *n >= 0.0)
                        .map(|n| n as u64),
                    grounding_accuracy: get("grounding_accuracy"),
                    mean_iou: get("mean_iou"),
                    category_recall: get("category_recall"),
                    augmentation: augmentation.take(),
                    paper: trial.reference,
                });
            }
        }
        Ok(Report {
            experiment_id: experiment.to_string(),
            name,
            axes,
            summary: summary::summarize(&rows),
            rows,
        })
    }
}

/// Whether a row's distance came from fewer images than its features have dimensions (see
/// [`ReportRow::fid_images`]), with that dimension.
fn few_fid_images(r: &ReportRow) -> Option<(u64, u64)> {
    let dims = match r.fid_kind.as_deref() {
        Some("fd_detector") => spatiallock_protocol::cost::FD_DETECTOR_FEATURES,
        Some(_) => spatiallock_protocol::cost::FID_FEATURES,
        None => return None,
    };
    r.ours.fid?;
    r.fid_images.filter(|n| *n < dims).map(|n| (n, dims))
}

fn cell(v: Option<f64>) -> String {
    cell_digits(v, 2)
}

fn cell_digits(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "–".into())
}

fn axis_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// The report as a Markdown table (ours / paper in each metric column), then, when some rows
/// differ only in their seed, the table "mean ± sd over seeds" ([`summary::to_markdown`]).
pub fn to_markdown(report: &Report) -> String {
    let fid_name = report
        .rows
        .iter()
        .find_map(|r| r.fid_kind.clone())
        .unwrap_or_else(|| "fid".into());
    let mut header: Vec<String> = vec!["trial".into()];
    header.extend(report.axes.iter().cloned());
    header.extend(
        [
            "val",
            "state",
            &format!("{fid_name} (paper)"),
            "mAP (paper)",
            "AP50 (paper)",
            "AP75 (paper)",
            "grounding acc.",
            "mean IoU",
            "cat. recall",
            "s/img (paper)",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut out = format!(
        "# {} ({})\n\nmAP, AP50 and AP75 in percent (COCO AP × 100, as the paper gives them); {fid_name}: lower is \
         better; s/img: seconds per generated image; the paper's numbers in parentheses where the grid gives them. \
         Per input object: grounding acc. = percent matched by a detection of its category at IoU ≥ 0.5, \
         mean IoU (0–1) of those matches, cat. recall = percent whose category is detected anywhere in the image.\n\n",
        report.name, report.experiment_id
    );
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for r in &report.rows {
        let paper = r.paper.unwrap_or_default();
        let pair = |a: Option<f64>, b: Option<f64>| match b {
            Some(_) => format!("{} ({})", cell(a), cell(b)),
            None => cell(a),
        };
        let mut cells = vec![r.trial.to_string()];
        cells.extend(report.axes.iter().map(|a| axis_text(r.axes.get(a))));
        cells.push(r.val.clone());
        cells.push(r.state.as_str().to_string());
        let mut fid_cell = pair(r.ours.fid, paper.fid);
        if few_fid_images(r).is_some() {
            fid_cell.push_str(" *");
        }
        cells.push(fid_cell);
        cells.push(pair(r.ours.map, paper.map));
        cells.push(pair(r.ours.ap50, paper.ap50));
        cells.push(pair(r.ours.ap75, paper.ap75));
        cells.push(cell(r.grounding_accuracy));
        cells.push(cell_digits(r.mean_iou, 3));
        cells.push(cell(r.category_recall));
        cells.push(pair(r.ours.infer_s, paper.infer_s));
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    // One note per distance kind, naming its fewest images.
    for kind in ["fid", "fd_detector"] {
        let fewest = report
            .rows
            .iter()
            .filter(|r| r.fid_kind.as_deref() == Some(kind))
            .filter_map(few_fid_images)
            .min();
        if let Some((images, dims)) = fewest {
            out.push_str(&format!(
                "\n\\* {kind} from as few as {images} images, fewer than its {dims} feature dimensions: biased \
                 upward; compare only with distances over as many images.\n"
            ));
        }
    }
    out.push_str(&augmentation_markdown(report));
    out.push_str(&summary::to_markdown(&report.summary, &fid_name));
    out
}

/// The detector augmentation table (paper Table 5), when some trial has one: per trial, the
/// evaluation detector's mAP on real validation images trained on real images alone and on real
/// + synthetic ones, and the gain beside the paper's "UP".
fn augmentation_markdown(report: &Report) -> String {
    let rows: Vec<(&ReportRow, &AugmentScores)> = report
        .rows
        .iter()
        .filter_map(|r| r.augmentation.as_ref().map(|a| (r, a)))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut header: Vec<String> = vec!["trial".into()];
    header.extend(report.axes.iter().cloned());
    header.extend(
        [
            "state",
            "synthetic images",
            "mAP real",
            "mAP real + synthetic",
            "gain (paper UP)",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut out = String::from(
        "\nDetector augmentation (paper Table 5): the evaluation detector's mAP (percent) on real validation \
         images, trained on the real images alone and on real + synthetic images generated by the trial's model \
         (same steps, batch and seed); gain in percentage points.\n\n",
    );
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for (r, a) in rows {
        let paper = r.paper.and_then(|p| p.map_gain);
        let mut cells = vec![r.trial.to_string()];
        cells.extend(report.axes.iter().map(|x| axis_text(r.axes.get(x))));
        cells.push(a.state.as_str().to_string());
        cells.push(a.synthetic_images.map_or_else(|| "–".into(), |n| n.to_string()));
        cells.push(cell(a.map_real));
        cells.push(cell(a.map_augmented));
        let gain = a.map_gain.map_or_else(|| "–".into(), |g| format!("{g:+.2}"));
        cells.push(match paper {
            Some(p) => format!("{gain} ({p:+.1})"),
            None => gain,
        });
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The report as CSV: ours and the paper's numbers in separate columns, one line per row. The
/// seed summary is left to JSON and Markdown: aggregate lines in the same table would be counted
/// again by anyone grouping the rows (the summary is one group-by away from them).
pub fn to_csv(report: &Report) -> String {
    let mut header: Vec<String> = vec!["trial".into()];
    header.extend(report.axes.iter().cloned());
    for col in [
        "val",
        "state",
        "fid_kind",
        "fid",
        "map",
        "ap50",
        "ap75",
        "grounding_accuracy",
        "mean_iou",
        "category_recall",
        "infer_s",
        "paper_fid",
        "paper_map",
        "paper_ap50",
        "paper_ap75",
        "paper_infer_s",
        "fid_images",
        "synthetic_images",
        "detector_map_real",
        "detector_map_augmented",
        "detector_map_gain",
        "paper_map_gain",
    ] {
        header.push(col.into());
    }
    let mut out = header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",") + "\n";
    let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for r in &report.rows {
        let p = r.paper.unwrap_or_default();
        let mut cells = vec![r.trial.to_string()];
        cells.extend(report.axes.iter().map(|a| axis_text(r.axes.get(a))));
        cells.push(r.val.clone());
        cells.push(r.state.as_str().into());
        cells.push(r.fid_kind.clone().unwrap_or_default());
        for v in [
            r.ours.fid,
            r.ours.map,
            r.ours.ap50,
            r.ours.ap75,
            r.grounding_accuracy,
            r.mean_iou,
            r.category_recall,
            r.ours.infer_s,
            p.fid,
            p.map,
            p.ap50,
            p.ap75,
            p.infer_s,
        ] {
            cells.push(num(v));
        }
        cells.push(r.fid_images.map(|n| n.to_string()).unwrap_or_default());
        let a = r.augmentation.as_ref();
        cells.push(
            a.and_then(|a| a.synthetic_images)
                .map(|n| n.to_string())
                .unwrap_or_default(),
        );
        for v in [
            a.and_then(|a| a.map_real),
            a.and_then(|a| a.map_augmented),
            a.and_then(|a| a.map_gain),
            p.map_gain,
        ] {
            cells.push(num(v));
        }
        out.push_str(&(cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",") + "\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut axes = IndexMap::new();
        axes.insert("loss.weights".to_string(), serde_json::json!([1, 1]));
        Report {
            experiment_id: "exp-1".into(),
            name: "t6".into(),
            axes: vec!["loss.weights".into()],
            rows: vec![ReportRow {
                trial: 0,
                axes,
                val: "evaluate trial 0 on coco, \"val\"".into(),
                state: JobState::Succeeded,
                ours: Reference {
                    fid: Some(30.5),
                    map: Some(12.25),
                    ..Default::default()
                },
                fid_kind: Some("fd_detector".into()),
                fid_images: Some(500),
                grounding_accuracy: Some(62.5),
                mean_iou: Some(0.75),
                category_recall: None,
                augmentation: None,
                paper: Some(Reference {
                    map: Some(31.4),
                    ..Default::default()
                }),
            }],
            summary: Vec::new(),
        }
    }

    #[test]
    fn markdown_puts_paper_numbers_beside_ours() {
        let md = to_markdown(&report());
        assert!(md.contains("| fd_detector (paper) |"), "{md}");
        assert!(md.contains("| 12.25 (31.40) |"), "{md}");
        assert!(md.contains("| 30.50 |"), "{md}");
        assert!(md.contains("| [1,1] |"), "{md}");
        assert!(md.contains("mAP, AP50 and AP75 in percent"), "{md}");
        assert!(!md.contains('*'), "500 images are enough for 128 dimensions: {md}");
        assert!(md.contains("| grounding acc. | mean IoU | cat. recall |"), "{md}");
        assert!(md.contains("| 62.50 | 0.750 | – |"), "{md}");
        assert!(!md.contains("over seeds"), "one row, nothing to summarise: {md}");
    }

    #[test]
    fn a_distance_from_fewer_images_than_dimensions_is_marked() {
        let mut r = report();
        r.rows[0].fid_images = Some(16);
        let md = to_markdown(&r);
        assert!(md.contains("| 30.50 * |"), "{md}");
        assert!(md.contains("fd_detector from as few as 16 images"), "{md}");
        assert!(md.contains("fewer than its 128 feature dimensions"), "{md}");
        r.rows[0].fid_kind = Some("fid".into());
        r.rows[0].fid_images = Some(1000);
        assert!(to_markdown(&r).contains("fewer than its 2048 feature dimensions"));
        // fid_images, then the five (empty) augmentation columns.
        assert!(to_csv(&r).lines().nth(1).is_some_and(|l| l.ends_with(",1000,,,,,")));
    }

    #[test]
    fn an_augmentation_gets_its_table_beside_the_papers_gain_and_csv_columns() {
        let mut r = report();
        assert!(!to_markdown(&r).contains("Detector augmentation"));
        r.rows[0].augmentation = Some(AugmentScores {
            map_real: Some(40.5),
            map_augmented: Some(42.0),
            map_gain: Some(1.5),
            synthetic_images: Some(256),
            state: JobState::Succeeded,
        });
        r.rows[0].paper = Some(Reference {
            map_gain: Some(3.2),
            ..Default::default()
        });
        let md = to_markdown(&r);
        assert!(md.contains("Detector augmentation (paper Table 5)"), "{md}");
        assert!(
            md.contains("| trial | loss.weights | state | synthetic images | mAP real | mAP real + synthetic | gain (paper UP) |"),
            "{md}"
        );
        assert!(
            md.contains("| 0 | [1,1] | succeeded | 256 | 40.50 | 42.00 | +1.50 (+3.2) |"),
            "{md}"
        );
        let csv = to_csv(&r);
        let (header, row) = (csv.lines().next().unwrap_or(""), csv.lines().nth(1).unwrap_or(""));
        assert!(
            header.ends_with(
                "synthetic_images,detector_map_real,detector_map_augmented,detector_map_gain,paper_map_gain"
            ),
            "{csv}"
        );
        assert!(row.ends_with(",256,40.5,42,1.5,3.2"), "{csv}");
    }

    #[test]
    fn repeated_seeds_get_a_summary_table_in_markdown_but_not_in_csv() {
        let mut r = report();
        let mut again = r.rows[0].clone();
        again.trial = 1;
        again.ours.map = Some(13.25);
        r.rows.push(again);
        r.summary = summary::summarize(&r.rows);
        assert_eq!(r.summary.len(), 1);
        let md = to_markdown(&r);
        assert!(md.contains("## mean ± sd over seeds"), "{md}");
        assert!(
            md.contains("| [1,1] | evaluate trial 0 on coco, \"val\" | 2 | 12.75 ± 0.71 |"),
            "{md}"
        );
        assert_eq!(to_csv(&r).lines().count(), 3);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["summary"][0]["trials"], serde_json::json!([0, 1]), "{json}");
        assert_eq!(json["summary"][0]["map"]["n"], 2, "{json}");
    }

    #[test]
    fn csv_quotes_fields_and_has_one_line_per_row() {
        let csv = to_csv(&report());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("trial,loss.weights,val,state,fid_kind,fid,map"));
        assert!(
            lines[1].contains("\"evaluate trial 0 on coco, \"\"val\"\"\""),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains(",30.5,12.25,"), "{}", lines[1]);
        assert!(lines[0].contains(",ap75,grounding_accuracy,mean_iou,category_recall,infer_s,"));
        assert!(lines[1].contains(",62.5,0.75,,"), "{}", lines[1]);
        assert!(lines[1].contains("\"[1,1]\""), "{}", lines[1]);
    }
}
