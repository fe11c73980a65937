//! Where a worker may read and write: the artifact root (attempt-scoped job folders,
//! `file://` URIs) and the dataset roots. A job that points elsewhere is rejected.
//!
//! Paths are checked as the operating system will open them: symbolic links and `..` are
//! resolved on the file system (never lexically, since `link/..` is the parent of the link's
//! target, not the folder holding the link), and only a not-yet-existing tail made of plain
//! names is appended to the resolved part. Roots are resolved the same way.

use std::io::ErrorKind;
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

/// `path` made absolute against the current directory; nothing is removed from it.
fn absolute(path: &Path) -> Result<PathBuf, String> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    std::env::current_dir()
        .map(|dir| dir.join(path))
        .map_err(|e| format!("`{}`: no current directory to resolve it against: {e}", path.display()))
}

/// Resolves `path` the way the operating system will when it is opened or created: the
/// longest prefix that exists is canonicalized (symbolic links and `..` followed on the file
/// system), and the part that does not exist yet is appended to it.
///
/// Errors (naming the path and the reason): the part that does not exist yet holds `..` (it
/// cannot be resolved before it exists); a component is a symbolic link to nothing (creating
/// the path would follow it to wherever it points); a prefix cannot be read (permissions, a
/// file used as a folder, a link loop); a relative path with no current directory.
pub fn resolve(path: &Path) -> Result<PathBuf, String> {
    let full = absolute(path)?;
    let parts: Vec<Component> = full.components().collect();
    for split in (1..=parts.len()).rev() {
        let existing: PathBuf = parts[..split].iter().collect();
        match existing.canonicalize() {
            Ok(mut resolved) => {
                for (i, part) in parts[split..].iter().enumerate() {
                    match part {
                        Component::Normal(name) => resolved.push(name),
                        _ => {
                            let missing: PathBuf = parts[..split + i].iter().collect();
                            return Err(format!(
                                "`{}`: `{}` does not exist, so the `..` after it cannot be resolved; \
                                 name the path without `..`",
                                path.display(),
                                missing.display()
                            ));
                        }
                    }
                }
                return Ok(resolved);
            }
            // Not there (yet): unless it is a link to nothing, try the parent.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if std::fs::symlink_metadata(&existing).is_ok() {
                    return Err(format!(
                        "`{}`: `{}` is a symbolic link to nothing, so where the path leads cannot be checked",
                        path.display(),
                        existing.display()
                    ));
                }
            }
            Err(e) => {
                return Err(format!(
                    "`{}`: cannot resolve `{}`: {e}",
                    path.display(),
                    existing.display()
                ))
            }
        }
    }
    // Only reached when not even the file system root could be canonicalized.
    Err(format!("`{}`: cannot resolve any part of it", path.display()))
}

/// `path` resolved ([`resolve`]) and checked to lie under one of `roots` (resolved the same
/// way; a root that cannot be resolved holds nothing). `outside` names the roots in the error,
/// which says where the path leads when that differs from the path as given.
fn resolve_under(path: &Path, roots: &[&Path], outside: &str) -> Result<PathBuf, String> {
    let resolved = resolve(path)?;
    if roots
        .iter()
        .filter_map(|root| resolve(root).ok())
        .any(|root| resolved.starts_with(root))
    {
        return Ok(resolved);
    }
    let given = absolute(path).unwrap_or_else(|_| path.to_path_buf());
    Err(if given == resolved {
        format!("`{}` is outside {outside}", path.display())
    } else {
        format!(
            "`{}` resolves to `{}`, outside {outside}",
            path.display(),
            resolved.display()
        )
    })
}

/// A `file://` URI for a local path (resolved as [`resolve`] does where possible; made
/// absolute otherwise).
pub fn file_uri(path: &Path) -> String {
    let p = resolve(path)
        .or_else(|_| absolute(path))
        .unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", p.display())
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
        JobPayload::AugmentDetector(a) => {
            base(&a.model.base);
            dataset_paths(&a.detector.data)
                .into_iter()
                .for_each(|s| out.push(("eval.detector.data", s.into())));
            dataset_paths(&a.val)
                .into_iter()
                .for_each(|s| out.push(("data.val", s.into())));
        }
        JobPayload::Noop(_) => {}
    }
    out
}

impl Roots {
    /// The folder of one attempt of a job (`job_id` is `<experiment>.<job>`), as named (see
    /// [`Roots::output_path`] for the checked form).
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

    fn artifact_root_text(&self) -> String {
        format!("the artifact root {}", self.artifacts.display())
    }

    /// A path the worker writes (an attempt's folder, a cache), resolved ([`resolve`]) and
    /// checked to lie under the artifact root; it need not exist yet.
    ///
    /// Errors: naming the path and where it leads when that is outside the artifact root, or
    /// why it cannot be resolved.
    pub fn output_path(&self, path: &Path) -> Result<PathBuf, String> {
        resolve_under(path, &[self.artifacts.as_path()], &self.artifact_root_text())
    }

    /// A `file://` URI under the artifact root, as a resolved path.
    ///
    /// Errors: naming the URI when it is not a `file://` URI, resolves outside the artifact
    /// root, or cannot be resolved.
    pub fn artifact_path(&self, uri: &str) -> Result<PathBuf, String> {
        let path = uri
            .strip_prefix("file://")
            .ok_or_else(|| format!("`{uri}` is not a file:// URI (only local artifact roots are supported)"))?;
        self.output_path(Path::new(path))
            .map_err(|e| format!("artifact `{uri}`: {e}"))
    }

    /// A path a job reads, resolved ([`resolve`]) and checked to lie under a dataset root.
    ///
    /// Errors: naming the path, where it leads and the roots when it is outside them, or why it
    /// cannot be resolved.
    pub fn data_path(&self, path: &Path) -> Result<PathBuf, String> {
        let roots: Vec<&Path> = self.data.iter().map(PathBuf::as_path).collect();
        let names: Vec<String> = self.data.iter().map(|r| r.display().to_string()).collect();
        let outside = format!(
            "the dataset roots ({}); give the worker --data-root for it",
            if names.is_empty() {
                "none configured".to_string()
            } else {
                names.join(", ")
            }
        );
        resolve_under(path, &roots, &outside)
    }

    /// Checks that every path a payload reads is under a dataset root.
    ///
    /// Errors: the first path that is not, prefixed by its field (`data.train`, …).
    pub fn check_payload(&self, payload: &JobPayload) -> Result<(), String> {
        for (field, p) in payload_paths(payload) {
            self.data_path(Path::new(&p)).map_err(|e| format!("{field}: {e}"))?;
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
        assert_eq!(roots.artifact_path(&uri).unwrap(), resolve(&a).unwrap());
        assert!(roots
            .artifact_path("file:///etc/passwd")
            .unwrap_err()
            .contains("outside the artifact root"));
        assert!(roots
            .artifact_path("s3://bucket/x")
            .unwrap_err()
            .contains("not a file:// URI"));
    }

    #[test]
    fn not_yet_existing_outputs_under_the_artifact_root_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            artifacts: dir.path().join("runs"), // not created yet either
            data: vec![],
        };
        let out = roots.attempt_dir("exp-1.train-ab", 1);
        let resolved = roots.output_path(&out).unwrap();
        assert!(
            resolved.ends_with("runs/exp-1/train-ab/attempt-1"),
            "{}",
            resolved.display()
        );
        let uri = format!("file://{}/step-10", out.display());
        assert!(roots.artifact_path(&uri).unwrap().ends_with("attempt-1/step-10"));
        // A job id cannot climb out of the root either, relative or absolute.
        let err = roots.output_path(&roots.attempt_dir("x.../../../etc", 1)).unwrap_err();
        assert!(err.contains("cannot be resolved"), "{err}");
        let err = roots.output_path(&roots.attempt_dir("x./etc", 1)).unwrap_err();
        assert!(err.contains("outside the artifact root"), "{err}");
    }

    #[test]
    fn dot_dot_after_a_missing_folder_is_refused_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).unwrap();
        let roots = Roots {
            artifacts: dir.path().join("runs"),
            data: vec![root.clone()],
        };
        let p = root.join("missing/../x.json");
        let err = roots.data_path(&p).unwrap_err();
        assert!(err.contains(&format!("`{}`", p.display())), "{err}");
        assert!(
            err.contains("missing` does not exist, so the `..` after it cannot be resolved"),
            "{err}"
        );
        // `..` through a folder that exists is resolved by the file system, and stays inside.
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let inside = roots.data_path(&root.join("sub/../x.json")).unwrap();
        assert_eq!(inside, root.canonicalize().unwrap().join("x.json"));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_cannot_lead_out_of_the_roots() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(outside.join("target")).unwrap();
        symlink(outside.join("target"), root.join("link")).unwrap();
        let roots = Roots {
            artifacts: dir.path().join("runs"),
            data: vec![root.clone()],
        };
        // Lexically `R/link/../x.json` is `R/x.json`; the OS opens `outside/x.json`.
        let escape = root.join("link/../x.json");
        let err = roots
            .check_payload(&detector(DatasetSpec::CocoFormat {
                images: root.join("images").display().to_string(),
                annotations: escape.display().to_string(),
            }))
            .unwrap_err();
        assert!(err.starts_with("eval.detector.data: "), "{err}");
        assert!(err.contains(&format!("`{}` resolves to `", escape.display())), "{err}");
        assert!(err.contains("outside/x.json`, outside the dataset roots"), "{err}");
        // Through the link to a file that does not exist (yet) is outside too.
        let err = roots.data_path(&root.join("link/x.json")).unwrap_err();
        assert!(
            err.contains("outside/target/x.json`, outside the dataset roots"),
            "{err}"
        );
        // A plain path inside, existing or not, is accepted.
        assert!(roots.data_path(&root.join("images")).is_ok());
        assert!(roots.data_path(&root.join("annotations.json")).is_ok());
        // A link inside the root to elsewhere inside it is fine.
        symlink(root.join("images"), root.join("pictures")).unwrap();
        assert_eq!(
            roots.data_path(&root.join("pictures/a.png")).unwrap(),
            root.canonicalize().unwrap().join("images/a.png")
        );
    }

    #[cfg(unix)]
    #[test]
    fn outputs_cannot_follow_links_out_of_the_artifact_root() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&runs).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        symlink(&outside, runs.join("exp-1")).unwrap();
        symlink(dir.path().join("nowhere"), runs.join("dangling")).unwrap();
        let roots = Roots {
            artifacts: runs.clone(),
            data: vec![],
        };
        let err = roots.output_path(&roots.attempt_dir("exp-1.train", 1)).unwrap_err();
        assert!(err.contains("outside the artifact root"), "{err}");
        let err = roots
            .artifact_path(&format!("file://{}/exp-1/../../etc/passwd", runs.display()))
            .unwrap_err();
        assert!(err.contains("outside the artifact root"), "{err}");
        // Creating through a link to nothing would write wherever it points.
        let err = roots.output_path(&runs.join("dangling/step-1")).unwrap_err();
        assert!(err.contains("is a symbolic link to nothing"), "{err}");
    }
}
