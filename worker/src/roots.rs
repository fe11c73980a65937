//! Where a worker may read and write: the artifact root (attempt-scoped job folders,
//! `file://` URIs) and the dataset roots. A job that points elsewhere is rejected.

use std::path::{Component, Path, PathBuf};

use spatiallock_protocol::trial::{BaseWeights, DatasetSpec, DetectorConfig};
use spatiallock_protocol::JobPayload;

/// The folders a worker uses.
#[derive(Debug, Clone)]
pub struct Roots {
    /// Job outputs and checkpoints: `<artifacts>/<experiment>/<job>/attempt-<n>/`.
    pub artifacts: PathBuf,
    /// Folders datasets and base weights may be read from.
    pub data: Vec<PathBuf>,
}

/// Makes a path absolute and removes `.`/`..` without touching the file system (the path
/// may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    // Resolve symlinks where the path exists, so a link cannot lead outside a root.
    out.canonicalize().unwrap_or(out)
}

/// A `file://` URI for a local path.
pub fn file_uri(path: &Path) -> String {
    format!("file://{}", normalize(path).display())
}

fn dataset_paths(d: &DatasetSpec) -> Vec<&str> {
    match d {
        DatasetSpec::Shapes { .. } => Vec::new(),
        DatasetSpec::Coco {
            images,
            instances,
            captions,
        } => [Some(images.as_str()), Some(instances.as_str()), captions.as_deref()]
            .into_iter()
            .flatten()
            .collect(),
        DatasetSpec::Flickr30k {
            images,
            annotations,
            sentences,
            ids,
        } => vec![images, annotations, sentences, ids],
        DatasetSpec::CocoFormat { images, annotations } => vec![images, annotations],
    }
}

/// Every file or folder a payload reads, besides the outputs of its dependencies.
pub fn payload_paths(payload: &JobPayload) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let mut base = |b: &BaseWeights| {
        if let BaseWeights::Path(p) = b {
            out.push(("model.base", p.clone()));
        }
    };
    match payload {
        JobPayload::Pretrain(p) => dataset_paths(&p.data)
            .into_iter()
            .for_each(|s| out.push(("data.train", s.into()))),
        JobPayload::Train(t) => {
            base(&t.base);
            dataset_paths(&t.data)
                .into_iter()
                .for_each(|s| out.push(("data.train", s.into())));
        }
        JobPayload::TrainDetector(d) => dataset_paths(&d.data)
            .into_iter()
            .for_each(|s| out.push(("eval.detector.data", s.into()))),
        JobPayload::Evaluate(e) => {
            base(&e.model.base);
            dataset_paths(&e.val)
                .into_iter()
                .for_each(|s| out.push(("data.val", s.into())));
            if let DetectorConfig::Torchscript { path } = &e.eval.detector {
                out.push(("eval.detector.path", path.clone()));
            }
        }
        JobPayload::Noop(_) => {}
    }
    out
}

impl Roots {
    /// The folder of one attempt of a job (`job_id` is `<experiment>.<job>`).
    pub fn attempt_dir(&self, job_id: &str, attempt: u64) -> PathBuf {
        let (experiment, job) = job_id.split_once('.').unwrap_or(("unknown", job_id));
        self.artifacts
            .join(experiment)
            .join(job)
            .join(format!("attempt-{attempt}"))
    }

    /// Root of the stores of frozen encoders' outputs (latents, caption embeddings) that every
    /// job of this worker shares (hidden, so no experiment's folder can clash with it).
    pub fn encoder_cache(&self) -> PathBuf {
        self.artifacts.join(".cache").join("encoders")
    }

    fn under(path: &Path, root: &Path) -> bool {
        normalize(path).starts_with(normalize(root))
    }

    /// A `file://` URI under the artifact root, as a path; an error naming the URI otherwise.
    pub fn artifact_path(&self, uri: &str) -> Result<PathBuf, String> {
        let path = uri
            .strip_prefix("file://")
            .ok_or_else(|| format!("`{uri}` is not a file:// URI (only local artifact roots are supported)"))?;
        let path = PathBuf::from(path);
        if !Self::under(&path, &self.artifacts) {
            return Err(format!(
                "`{uri}` is outside the artifact root {}",
                self.artifacts.display()
            ));
        }
        Ok(path)
    }

    /// Checks that every path a payload reads is under a dataset root.
    pub fn check_payload(&self, payload: &JobPayload) -> Result<(), String> {
        for (field, p) in payload_paths(payload) {
            let path = Path::new(&p);
            if !self.data.iter().any(|root| Self::under(path, root)) {
                let roots: Vec<String> = self.data.iter().map(|r| r.display().to_string()).collect();
                return Err(format!(
                    "{field}: `{p}` is outside the dataset roots ({}); give the worker --data-root for it",
                    if roots.is_empty() {
                        "none configured".to_string()
                    } else {
                        roots.join(", ")
                    }
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spatiallock_protocol::expand::DetectorSpec;

    fn coco(root: &str) -> DatasetSpec {
        DatasetSpec::Coco {
            images: format!("{root}/val2017"),
            instances: format!("{root}/annotations/instances_val2017.json"),
            captions: None,
        }
    }

    fn detector(data: DatasetSpec) -> JobPayload {
        JobPayload::TrainDetector(DetectorSpec {
            steps: 1,
            batch_size: 1,
            lr: 1e-3,
            data,
            resolution: 32,
        })
    }

    #[test]
    fn payload_paths_must_be_under_a_data_root() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let roots = Roots {
            artifacts: dir.path().join("runs"),
            data: vec![data.clone()],
        };
        assert!(roots
            .check_payload(&detector(coco(&data.display().to_string())))
            .is_ok());
        let err = roots.check_payload(&detector(coco("/etc"))).unwrap_err();
        assert!(
            err.contains("eval.detector.data: `/etc/val2017` is outside the dataset roots"),
            "{err}"
        );
        let sneaky = format!("{}/../../etc", data.display());
        assert!(roots.check_payload(&detector(coco(&sneaky))).is_err());
    }

    #[test]
    fn artifact_uris_round_trip_and_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            artifacts: dir.path().to_path_buf(),
            data: vec![],
        };
        let a = roots.attempt_dir("exp-1.train-ab", 2);
        assert!(a.ends_with("exp-1/train-ab/attempt-2"));
        let uri = file_uri(&a);
        assert_eq!(normalize(&roots.artifact_path(&uri).unwrap()), normalize(&a));
        assert!(roots
            .artifact_path("file:///etc/passwd")
            .unwrap_err()
            .contains("outside the artifact root"));
        assert!(roots
            .artifact_path("s3://bucket/x")
            .unwrap_err()
            .contains("not a file:// URI"));
    }
}
