//! Fixed-shape f32 records on disk, shared between runs: what a frozen encoder made of a
//! dataset (VAE latents, caption embeddings), so later runs read it back instead of encoding.
//!
//! A store is a folder named by a hash of its [`StoreKey`] (everything its records depend on).
//! It holds `meta.json` (the key and the record shape), `records.f32` (record `r` at offset
//! `r·record_bytes`, little-endian) and `sums.u64` (each record's checksum, written after the
//! record). A record whose checksum is missing or does not match its bytes (a write cut short, a
//! crash) reads as absent and is encoded again, so a store changes how fast a run goes, never its
//! numbers. Several processes may share a store: a record is always written whole, with the same
//! bytes for the same key.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::ModelError;

/// Bump when the record layout or what an encoder stores changes.
const FORMAT: u32 = 1;

/// Everything a store's records depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreKey {
    /// What the records are (`latents`, `captions`).
    pub kind: String,
    /// What the records were made from: [`crate::data::Dataset::image_fingerprint`] for
    /// latents, [`crate::data::Dataset::annotation_fingerprint`] for captions.
    pub dataset: String,
    /// [`encoder_fingerprint`] of the frozen encoder that made them.
    pub encoder: String,
    /// `cpu` or `cuda`: kernels differ in the last bits between device types (workers that
    /// share a cache folder across GPU models or libtorch builds share records too).
    pub device: String,
}

impl StoreKey {
    /// The key of `kind` records made from `dataset` on `device` by the encoder whose
    /// fingerprint is `encoder`.
    pub fn new(kind: &str, dataset: String, encoder: String, device: Device) -> Self {
        Self {
            kind: kind.into(),
            dataset,
            encoder,
            device: if device.is_cuda() { "cuda" } else { "cpu" }.into(),
        }
    }

    /// The folder name of this key's store.
    fn folder(&self) -> String {
        let text = format!(
            "v{FORMAT}\n{}\n{}\n{}\n{}",
            self.kind, self.dataset, self.encoder, self.device
        );
        format!("{}-{}", self.kind, hex(&Sha256::digest(text.as_bytes())[..16]))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash of an encoder: its configuration (activation, scaling factor, ...) and every variable
/// (name, shape, values) of `vs`.
pub fn encoder_fingerprint(config: &impl Serialize, vs: &VarStore) -> Result<String, ModelError> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hash = Sha256::new();
    hash.update(serde_json::to_string(config).map_err(|e| ModelError::Input(e.to_string()))?);
    for (name, t) in vars {
        hash.update(name.as_bytes());
        hash.update(format!("{:?}", t.size()).as_bytes());
        hash.update(f32_bytes(&t)?);
    }
    Ok(hex(&hash.finalize()))
}

fn f32_bytes(t: &Tensor) -> Result<Vec<u8>, ModelError> {
    let flat = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .flatten(0, -1)
        .contiguous();
    let values = Vec::<f32>::try_from(&flat)?;
    Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// A record's checksum; 0 is kept for "not written".
fn checksum(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(head).max(1)
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Meta {
    format: u32,
    key: StoreKey,
    shape: Vec<i64>,
}

/// One key's records in a folder on disk (see the module doc for the layout).
pub struct RecordStore {
    dir: PathBuf,
    shape: Vec<i64>,
    record_bytes: u64,
    records: File,
    sums: File,
}

impl RecordStore {
    /// The store of `key` under `root`, if one has been created.
    pub fn existing(root: &Path, key: &StoreKey) -> Result<Option<Self>, ModelError> {
        let dir = root.join(key.folder());
        let meta_path = dir.join("meta.json");
        if !meta_path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&meta_path).map_err(|source| io(&meta_path, source))?;
        let meta: Meta = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: meta_path.clone(),
            message: format!(
                "not a record store description ({e}); delete {} to rebuild it",
                dir.display()
            ),
        })?;
        if meta.shape.is_empty() || meta.shape.iter().any(|&d| d <= 0) {
            return Err(ModelError::Config {
                path: meta_path,
                message: format!(
                    "record shape {:?} is not a list of positive sizes; delete {} to rebuild it",
                    meta.shape,
                    dir.display()
                ),
            });
        }
        if meta.format != FORMAT || &meta.key != key {
            return Err(ModelError::Config {
                path: meta_path,
                message: format!(
                    "describes other records than this run's; delete {} to rebuild it",
                    dir.display()
                ),
            });
        }
        Self::open_files(dir, meta.shape).map(Some)
    }

    /// The store of `key` under `root` for records of `shape`, created if missing.
    pub fn create(root: &Path, key: &StoreKey, shape: &[i64]) -> Result<Self, ModelError> {
        if let Some(store) = Self::existing(root, key)? {
            if store.shape != shape {
                return Err(ModelError::Input(format!(
                    "record store {}: holds records of shape {:?}, this run makes {shape:?}",
                    store.dir.display(),
                    store.shape
                )));
            }
            return Ok(store);
        }
        let dir = root.join(key.folder());
        std::fs::create_dir_all(&dir).map_err(|source| io(&dir, source))?;
        let meta = Meta {
            format: FORMAT,
            key: key.clone(),
            shape: shape.to_vec(),
        };
        let text = serde_json::to_string_pretty(&meta).map_err(|e| ModelError::Input(e.to_string()))?;
        // Written aside and renamed, so a reader never sees half a description; the aside name
        // is unique per process and call (in-process workers may create the same store at once).
        static CREATED: AtomicU64 = AtomicU64::new(0);
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("meta.json.{}.{n}", std::process::id()));
        std::fs::write(&tmp, text).map_err(|source| io(&tmp, source))?;
        let meta_path = dir.join("meta.json");
        std::fs::rename(&tmp, &meta_path).map_err(|source| io(&meta_path, source))?;
        Self::open_files(dir, shape.to_vec())
    }

    fn open_files(dir: PathBuf, shape: Vec<i64>) -> Result<Self, ModelError> {
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|source| io(&path, source))
        };
        let numel: i64 = shape.iter().product();
        Ok(Self {
            records: open("records.f32")?,
            sums: open("sums.u64")?,
            record_bytes: numel.max(0) as u64 * 4,
            shape,
            dir,
        })
    }

    /// The folder of this store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record `r`, if stored intact; on the CPU.
    pub fn get(&self, r: u64) -> Result<Option<Tensor>, ModelError> {
        let mut sum = [0u8; 8];
        if !read_at(&self.sums, &mut sum, r * 8, &self.dir.join("sums.u64"))? {
            return Ok(None);
        }
        let sum = u64::from_le_bytes(sum);
        if sum == 0 {
            return Ok(None);
        }
        let mut bytes = vec![0u8; self.record_bytes as usize];
        if !read_at(
            &self.records,
            &mut bytes,
            r * self.record_bytes,
            &self.dir.join("records.f32"),
        )? || checksum(&bytes) != sum
        {
            return Ok(None);
        }
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Some(Tensor::from_slice(&values).view(self.shape.as_slice())))
    }

    /// Stores record `r`.
    pub fn put(&self, r: u64, record: &Tensor) -> Result<(), ModelError> {
        if record.size() != self.shape {
            return Err(ModelError::Input(format!(
                "record store {}: a record of shape {:?} does not fit records of {:?}",
                self.dir.display(),
                record.size(),
                self.shape
            )));
        }
        let bytes = f32_bytes(record)?;
        let records = self.dir.join("records.f32");
        self.records
            .write_all_at(&bytes, r * self.record_bytes)
            .map_err(|source| io(&records, source))?;
        let sums = self.dir.join("sums.u64");
        self.sums
            .write_all_at(&checksum(&bytes).to_le_bytes(), r * 8)
            .map_err(|source| io(&sums, source))
    }
}

/// Fills `buf` from `offset`; false when the file ends first (a record not written yet).
fn read_at(file: &File, buf: &mut [u8], offset: u64, path: &Path) -> Result<bool, ModelError> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(source) => Err(io(path, source)),
    }
}

fn io(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dataset: &str) -> StoreKey {
        StoreKey {
            kind: "latents".into(),
            dataset: dataset.into(),
            encoder: "e".into(),
            device: "cpu".into(),
        }
    }

    fn record(seed: f64) -> Tensor {
        Tensor::arange(4 * 4 * 4, (Kind::Float, Device::Cpu)).view([4, 4, 4]) * seed + 0.125
    }

    #[test]
    fn records_come_back_bit_for_bit_and_absent_ones_are_misses() {
        let root = tempfile::tempdir().expect("tempdir");
        assert!(RecordStore::existing(root.path(), &key("a"))
            .expect("no error")
            .is_none());
        let store = RecordStore::create(root.path(), &key("a"), &[4, 4, 4]).expect("created");
        store.put(7, &record(1.5)).expect("put");
        store.put(0, &record(-2.0)).expect("put");
        assert!(store.get(7).expect("read").expect("present").equal(&record(1.5)));
        assert!(store.get(0).expect("read").expect("present").equal(&record(-2.0)));
        assert!(store.get(3).expect("read").is_none(), "a hole in the middle");
        assert!(store.get(19).expect("read").is_none(), "past the end");
        let err = store.put(1, &Tensor::zeros([4, 2, 2], (Kind::Float, Device::Cpu)));
        assert!(err.is_err(), "a record of another shape is refused");

        // A second process opening the same key sees the records; another key does not.
        let again = RecordStore::existing(root.path(), &key("a"))
            .expect("opens")
            .expect("exists");
        assert!(again.get(7).expect("read").expect("present").equal(&record(1.5)));
        assert!(RecordStore::existing(root.path(), &key("b"))
            .expect("no error")
            .is_none());
        let mut captions = key("a");
        captions.kind = "captions".into();
        assert!(RecordStore::existing(root.path(), &captions)
            .expect("no error")
            .is_none());
        assert!(
            RecordStore::create(root.path(), &key("a"), &[4, 8, 8]).is_err(),
            "same key, other shape"
        );
    }

    #[test]
    fn threads_creating_the_same_store_at_once_all_succeed() {
        let root = tempfile::tempdir().expect("tempdir");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let root = root.path().to_path_buf();
                std::thread::spawn(move || {
                    let store = RecordStore::create(&root, &key("a"), &[4, 4, 4])?;
                    store.put(i, &record(i as f64))
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread").expect("created and written");
        }
        let store = RecordStore::existing(root.path(), &key("a"))
            .expect("opens")
            .expect("exists");
        for i in 0..8u64 {
            assert!(store.get(i).expect("read").expect("present").equal(&record(i as f64)));
        }
        let leftovers: Vec<_> = std::fs::read_dir(store.dir())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("meta.json."))
            .collect();
        assert!(leftovers.is_empty(), "no aside files are left behind");
    }

    #[test]
    fn a_damaged_record_is_a_miss_not_wrong_numbers() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = RecordStore::create(root.path(), &key("a"), &[4, 4, 4]).expect("created");
        store.put(0, &record(1.0)).expect("put");
        store.put(1, &record(2.0)).expect("put");
        // Flip one byte of the first record, as a write cut short would leave it.
        let path = store.dir().join("records.f32");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[10] ^= 0x40;
        std::fs::write(&path, bytes).expect("write");
        assert!(store.get(0).expect("read").is_none());
        assert!(store.get(1).expect("read").expect("intact").equal(&record(2.0)));
        store.put(0, &record(1.0)).expect("rewritten");
        assert!(store.get(0).expect("read").expect("present").equal(&record(1.0)));
    }

    #[test]
    fn a_foreign_description_is_an_error_naming_the_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = RecordStore::create(root.path(), &key("a"), &[4, 4, 4]).expect("created");
        let meta = store.dir().join("meta.json");
        std::fs::write(&meta, "{not json").expect("write");
        let err = RecordStore::existing(root.path(), &key("a"))
            .err()
            .expect("error")
            .to_string();
        assert!(err.contains("meta.json") && err.contains("delete"), "{err}");
        let mut bad: serde_json::Value = serde_json::json!({"format": FORMAT, "key": key("a"), "shape": [4, -1]});
        std::fs::write(&meta, bad.to_string()).expect("write");
        let err = RecordStore::existing(root.path(), &key("a"))
            .err()
            .expect("error")
            .to_string();
        assert!(err.contains("meta.json") && err.contains("[4, -1]"), "{err}");
        bad["shape"] = serde_json::json!([4, 4, 4]);
        std::fs::write(&meta, bad.to_string()).expect("write");
        assert!(RecordStore::existing(root.path(), &key("a")).expect("valid").is_some());
    }
}
