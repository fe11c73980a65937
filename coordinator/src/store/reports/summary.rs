//! The seed summary of a report: rows that differ only in their seed, grouped, with the mean and
//! sample standard deviation of their scores, and whether the groups' mAP intervals overlap.

use indexmap::IndexMap;
use serde_json::Value;
use spatiallock_protocol::api::{MeanSd, ReportRow, SummaryRow};

use super::axis_text;

/// Whether an axis only repeats a trial with another seed: `seed`, or a dotted path ending in
/// `.seed` (the spec's `seeds` are no axis at all: their rows share every axis value).
pub fn is_seed_axis(name: &str) -> bool {
    name == "seed" || name.ends_with(".seed")
}

/// Mean and sample standard deviation (divisor n − 1, none for one value) of `values`; `None`
/// when there are none.
pub fn mean_sd(values: &[f64]) -> Option<MeanSd> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.len() > 1).then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    Some(MeanSd {
        n: values.len() as u64,
        mean,
        sd,
    })
}

/// Groups `rows` by (axes other than seed axes, validation set), in order of first appearance.
pub fn summarize(rows: &[ReportRow]) -> Vec<SummaryRow> {
    let mut groups: IndexMap<String, Vec<&ReportRow>> = IndexMap::new();
    for r in rows {
        let axes: IndexMap<&String, &Value> = r.axes.iter().filter(|(k, _)| !is_seed_axis(k)).collect();
        let key = format!("{}\u{0}{}", serde_json::to_string(&axes).unwrap_or_default(), r.val);
        groups.entry(key).or_default().push(r);
    }
    groups.into_values().map(|g| group_row(&g)).collect()
}

fn group_row(rows: &[&ReportRow]) -> SummaryRow {
    let first = rows[0];
    let stat = |f: fn(&ReportRow) -> Option<f64>| mean_sd(&rows.iter().filter_map(|r| f(r)).collect::<Vec<_>>());
    let fid_kind = rows.iter().find_map(|r| r.ours.fid.and(r.fid_kind.clone()));
    let fids: Vec<f64> = rows
        .iter()
        .filter(|r| r.fid_kind == fid_kind)
        .filter_map(|r| r.ours.fid)
        .collect();
    SummaryRow {
        axes: first
            .axes
            .iter()
            .filter(|(k, _)| !is_seed_axis(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        val: first.val.clone(),
        trials: rows.iter().map(|r| r.trial).collect(),
        map: stat(|r| r.ours.map),
        ap50: stat(|r| r.ours.ap50),
        grounding_accuracy: stat(|r| r.grounding_accuracy),
        mean_iou: stat(|r| r.mean_iou),
        fid: mean_sd(&fids),
        fid_kind,
    }
}

/// A group's name: its only axis value, else `axis=value, …`, else `base`.
pub fn label(s: &SummaryRow) -> String {
    match s.axes.len() {
        0 => "base".into(),
        1 => s.axes.values().next().map(|v| axis_text(Some(v))).unwrap_or_default(),
        _ => s
            .axes
            .iter()
            .map(|(k, v)| format!("{k}={}", axis_text(Some(v))))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// `mean ± sd` with `digits` decimals (sd `–` for one value), and `(n=k)` when only k of the
/// group's `seeds` rows have the metric; `–` without any.
fn pm(m: Option<MeanSd>, seeds: usize, digits: usize) -> String {
    let Some(m) = m else { return "–".into() };
    let sd = m.sd.map_or_else(|| "–".to_string(), |s| format!("{s:.digits$}"));
    let partial = if (m.n as usize) < seeds {
        format!(" (n={})", m.n)
    } else {
        String::new()
    };
    format!("{:.digits$} ± {sd}{partial}", m.mean)
}

/// One sentence per pair of groups on the same validation set whose mAP has an interval (two or
/// more seeds): whether `mean ± sd` of the two overlap, the higher mean first.
pub fn overlap_sentences(summary: &[SummaryRow]) -> Vec<String> {
    let several_vals = summary.iter().any(|s| s.val != summary[0].val);
    let with_sd: Vec<(&SummaryRow, MeanSd, f64)> = summary
        .iter()
        .filter_map(|s| s.map.and_then(|m| m.sd.map(|sd| (s, m, sd))))
        .collect();
    let mut out = Vec::new();
    for (i, (a, ma, sa)) in with_sd.iter().enumerate() {
        for (b, mb, sb) in with_sd.iter().skip(i + 1).filter(|(b, ..)| b.val == a.val) {
            let ((hi, mh, sh), (lo, ml, sl)) = if mb.mean > ma.mean {
                ((b, mb, sb), (a, ma, sa))
            } else {
                ((a, ma, sa), (b, mb, sb))
            };
            let verdict = if mh.mean - sh <= ml.mean + sl {
                "overlap"
            } else {
                "do not overlap"
            };
            let on = if several_vals {
                format!(" on {}", a.val)
            } else {
                String::new()
            };
            out.push(format!(
                "{} vs {}{on}: intervals {verdict} ({:.2} ± {:.2} vs {:.2} ± {:.2}; n = {} and {})",
                label(hi),
                label(lo),
                mh.mean,
                sh,
                ml.mean,
                sl,
                mh.n,
                ml.n
            ));
        }
    }
    out
}

/// The Markdown section "mean ± sd over seeds": a table of the groups and the mAP overlap
/// sentences; empty when no group has more than one row (nothing to summarise).
pub fn to_markdown(summary: &[SummaryRow], fid_name: &str) -> String {
    if summary.iter().all(|s| s.trials.len() < 2) {
        return String::new();
    }
    let mut header: Vec<String> = summary[0].axes.keys().cloned().collect();
    header.extend(
        ["val", "seeds", "mAP", "AP50", "grounding acc.", "mean IoU", fid_name]
            .iter()
            .map(|s| s.to_string()),
    );
    let mut out = String::from(
        "\n## mean ± sd over seeds\n\nRows that differ only in their seed; sd is the sample standard deviation \
         (n − 1), – for a single seed; (n=k): only k seeds have the metric.\n\n",
    );
    out.push_str(&format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    ));
    for s in summary {
        let seeds = s.trials.len();
        let mut cells: Vec<String> = s.axes.values().map(|v| axis_text(Some(v))).collect();
        cells.extend([s.val.clone(), seeds.to_string()]);
        cells.extend([
            pm(s.map, seeds, 2),
            pm(s.ap50, seeds, 2),
            pm(s.grounding_accuracy, seeds, 2),
            pm(s.mean_iou, seeds, 3),
            pm(s.fid, seeds, 2),
        ]);
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    let sentences = overlap_sentences(summary);
    if !sentences.is_empty() {
        out.push_str(
            "\nmAP, mean ± 1 sample sd over the seeds (whether these ranges overlap is a first look, \
             not a significance test):\n\n",
        );
        for s in sentences {
            out.push_str(&format!("- {s}\n"));
        }
    }
    if summary
        .iter()
        .any(|s| s.map.is_some_and(|m| m.n >= 2 && m.sd == Some(0.0)))
    {
        out.push_str(
            "\nA trial's seed sets its training (initialisation and data order); every trial is \
             evaluated on the same layouts from the same noise (a paired comparison). Groups with \
             an sd of exactly 0 trained nothing that depends on the seed (\"none\" evaluates the \
             base as it is), so their seeds give identical scores.\n",
        );
    }
    if summary.iter().any(|s| s.map.is_some_and(|m| m.sd.is_none())) {
        out.push_str("\nGroups with mAP from a single seed have no interval to compare.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use spatiallock_protocol::api::JobState;
    use spatiallock_protocol::spec::Reference;

    fn row(trial: u64, case: &str, val: &str, map: Option<f64>) -> ReportRow {
        let mut axes = IndexMap::new();
        axes.insert("components".to_string(), Value::from(case));
        ReportRow {
            trial,
            axes,
            val: val.into(),
            state: JobState::Succeeded,
            ours: Reference {
                map,
                fid: Some(20.0 + trial as f64),
                ..Default::default()
            },
            fid_kind: Some("fd_detector".into()),
            fid_images: None,
            grounding_accuracy: map.map(|m| m * 2.0),
            mean_iou: None,
            category_recall: None,
            augmentation: None,
            paper: None,
        }
    }

    #[test]
    fn mean_and_sample_sd() {
        let m = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!((m.n, m.mean), (8, 5.0));
        assert!((m.sd.unwrap() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12, "{m:?}");
        assert_eq!(
            mean_sd(&[3.5]),
            Some(MeanSd {
                n: 1,
                mean: 3.5,
                sd: None
            })
        );
        assert_eq!(mean_sd(&[]), None);
    }

    #[test]
    fn rows_group_by_axes_but_seed_and_by_val() {
        let mut rows = vec![
            row(0, "none", "coco", Some(3.0)),
            row(1, "none", "coco", Some(4.0)),
            row(2, "PoI", "coco", Some(21.0)),
            row(3, "PoI", "coco", None),
            row(4, "PoI", "flickr", Some(10.0)),
        ];
        // An explicit seed axis does not split groups.
        rows[1].axes.insert("training.seed".into(), Value::from(7));
        let s = summarize(&rows);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].trials, vec![0, 1]);
        assert!(!s[0].axes.contains_key("training.seed"));
        assert_eq!(s[0].map.map(|m| (m.n, m.mean)), Some((2, 3.5)));
        assert_eq!(s[0].fid.map(|m| m.mean), Some(20.5));
        assert_eq!(s[0].fid_kind.as_deref(), Some("fd_detector"));
        assert_eq!(s[0].grounding_accuracy.map(|m| m.mean), Some(7.0));
        assert_eq!(s[0].mean_iou, None);
        assert_eq!((s[1].trials.clone(), s[1].map), (vec![2, 3], mean_sd(&[21.0])));
        assert_eq!((s[2].val.as_str(), s[2].trials.clone()), ("flickr", vec![4]));
    }

    #[test]
    fn overlap_is_said_in_words_per_validation_set() {
        let rows = vec![
            row(0, "none", "coco", Some(3.0)),
            row(1, "none", "coco", Some(4.0)),
            row(2, "PoI", "coco", Some(21.0)),
            row(3, "PoI", "coco", Some(22.0)),
            row(4, "PoG", "coco", Some(21.5)),
            row(5, "PoG", "coco", Some(23.0)),
        ];
        let s = summarize(&rows);
        let said = overlap_sentences(&s);
        assert_eq!(said.len(), 3, "{said:?}");
        assert_eq!(
            said[0],
            "PoI vs none: intervals do not overlap (21.50 ± 0.71 vs 3.50 ± 0.71; n = 2 and 2)"
        );
        assert!(
            said[2].starts_with("PoG vs PoI: intervals overlap (22.25 ± 1.06 vs 21.50 ± 0.71;"),
            "{said:?}"
        );
        let md = to_markdown(&s, "fd_detector");
        assert!(md.contains("## mean ± sd over seeds"), "{md}");
        assert!(
            md.contains("| components | val | seeds | mAP | AP50 | grounding acc. | mean IoU | fd_detector |"),
            "{md}"
        );
        assert!(
            md.contains("| none | coco | 2 | 3.50 ± 0.71 | – | 7.00 ± 1.41 | – | 20.50 ± 0.71 |"),
            "{md}"
        );
        assert!(md.contains("- PoI vs none: intervals do not overlap"), "{md}");
        assert!(!md.contains("sd of exactly 0"), "{md}");
        // A row with nothing trained on the seed scores the same for every seed, and says why.
        let same = vec![row(0, "none", "coco", Some(3.0)), row(1, "none", "coco", Some(3.0))];
        let md = to_markdown(&summarize(&same), "fd_detector");
        assert!(md.contains("| none | coco | 2 | 3.00 ± 0.00 |"), "{md}");
        assert!(
            md.contains("sd of exactly 0 trained nothing that depends on the seed"),
            "{md}"
        );
        // Another validation set is named, and never compared across sets.
        let mut more = rows.clone();
        more.extend([row(6, "none", "flickr", Some(1.0)), row(7, "none", "flickr", Some(2.0))]);
        let said = overlap_sentences(&summarize(&more));
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said[0].starts_with("PoI vs none on coco:"), "{said:?}");
    }

    #[test]
    fn single_seeds_show_a_dash_and_no_table_without_repeats() {
        let rows = vec![
            row(0, "none", "coco", Some(3.0)),
            row(1, "PoI", "coco", Some(21.0)),
            row(2, "PoI", "coco", None),
        ];
        let s = summarize(&rows);
        let md = to_markdown(&s, "fd_detector");
        assert!(md.contains("| none | coco | 1 | 3.00 ± – |"), "{md}");
        assert!(md.contains("| PoI | coco | 2 | 21.00 ± – (n=1) |"), "{md}");
        assert!(overlap_sentences(&s).is_empty());
        assert!(md.contains("no interval to compare"), "{md}");
        assert_eq!(to_markdown(&summarize(&rows[..2]), "fid"), "");
    }
}
