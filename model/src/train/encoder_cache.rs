//! What the frozen encoders make of a dataset, computed once and reused: the VAE latents of each
//! image and its mirror image, and the text embedding of each caption. Every step of a run
//! reuses them, and with a cache folder so does every later run on the same data with the same
//! encoder and device type (the trials of a grid, the next attempt of a job).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{to_json_text, ModelError};
use crate::layout::JobDir;
use crate::persist::record_store::{RecordStore, StoreKey};

/// Where a cache's entries came from so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Entries computed by the encoder.
    pub computed: u64,
    /// Entries read from the store on disk.
    pub from_disk: u64,
    /// Entries reused from memory.
    pub from_memory: u64,
}

/// One encoder's outputs by record number: in a [`RecordStore`] when the run has a cache folder
/// (nothing kept in memory, so a COCO-sized dataset fits), otherwise in memory.
pub struct EncoderCache {
    disk: Option<(PathBuf, StoreKey)>,
    store: Option<RecordStore>,
    memory: HashMap<u64, Tensor>,
    /// What the run has done so far.
    pub stats: CacheStats,
}

impl EncoderCache {
    /// Entries kept in memory for this run only.
    pub fn in_memory() -> Self {
        Self {
            disk: None,
            store: None,
            memory: HashMap::new(),
            stats: CacheStats::default(),
        }
    }

    /// Entries of `key` kept in the store under `root` (created with the first entry).
    pub fn on_disk(root: &Path, key: StoreKey) -> Result<Self, ModelError> {
        let store = RecordStore::existing(root, &key)?;
        Ok(Self {
            disk: Some((root.to_path_buf(), key)),
            store,
            ..Self::in_memory()
        })
    }

    /// The folder of the store on disk, once there is one.
    pub fn store_dir(&self) -> Option<&Path> {
        self.store.as_ref().map(RecordStore::dir)
    }

    /// Entry `record`, if cached (on the CPU when it comes from disk).
    pub fn get(&mut self, record: u64) -> Result<Option<Tensor>, ModelError> {
        if let Some(t) = self.memory.get(&record) {
            self.stats.from_memory += 1;
            return Ok(Some(t.shallow_clone()));
        }
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let found = store.get(record)?;
        if found.is_some() {
            self.stats.from_disk += 1;
        }
        Ok(found)
    }

    /// Keeps a freshly computed entry.
    pub fn put(&mut self, record: u64, value: &Tensor) -> Result<(), ModelError> {
        self.stats.computed += 1;
        let Some((root, key)) = &self.disk else {
            self.memory.insert(record, value.shallow_clone());
            return Ok(());
        };
        let store = match &mut self.store {
            Some(store) => store,
            empty => empty.insert(RecordStore::create(root, key, &value.size())?),
        };
        store.put(record, value)
    }
}

/// What a run's encoder caches did: written as `encoder_cache.json` in the run's folder when
/// the run ends or stops, and shown by the CLI and the worker's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheReport {
    /// U-Net inputs: VAE latents (or images, in pixel space).
    pub latents: CacheStats,
    /// Caption embeddings.
    pub captions: CacheStats,
    /// The stores on disk this run used.
    pub stores: Vec<PathBuf>,
}

impl CacheReport {
    /// Writes [`JobDir::encoder_cache_report`] of the run folder `out`.
    pub fn write(&self, out: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(out).map_err(|source| ModelError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        let path = JobDir::new(out).encoder_cache_report();
        let text = to_json_text("the encoder cache report", self)?;
        std::fs::write(&path, text).map_err(|source| ModelError::Io { path, source })
    }

    /// The report of the run in `out`, if it wrote one.
    pub fn read(out: &Path) -> Option<Self> {
        serde_json::from_str(&std::fs::read_to_string(JobDir::new(out).encoder_cache_report()).ok()?).ok()
    }

    /// One line: "encoder caches: inputs 12 encoded, 36 read back from disk, 0 from memory;
    /// captions ...; stores: ...".
    pub fn summary(&self) -> String {
        let part = |s: &CacheStats| {
            format!(
                "{} encoded, {} read back from disk, {} from memory",
                s.computed, s.from_disk, s.from_memory
            )
        };
        let stores = if self.stores.is_empty() {
            "none (kept in memory)".to_string()
        } else {
            self.stores
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "encoder caches: inputs {}; captions {}; stores: {stores}",
            part(&self.latents),
            part(&self.captions)
        )
    }
}

/// The record of image `index`'s latent, mirrored when `flip`.
pub fn latent_record(index: usize, flip: bool) -> u64 {
    2 * index as u64 + u64::from(flip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn key() -> StoreKey {
        StoreKey {
            kind: "latents".into(),
            dataset: "d".into(),
            encoder: "e".into(),
            device: "cpu".into(),
        }
    }

    fn value(v: f64) -> Tensor {
        Tensor::full([2, 3], v, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn the_cache_counts_where_entries_came_from() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut cache = EncoderCache::on_disk(root.path(), key()).expect("cache");
        assert!(cache.get(latent_record(0, true)).expect("read").is_none());
        assert!(cache.store_dir().is_none(), "no store before the first entry");
        cache.put(latent_record(0, true), &value(1.0)).expect("put");
        assert!(cache.store_dir().is_some_and(|d| d.join("meta.json").is_file()));
        assert!(cache.get(1).expect("read").is_some());
        assert!(
            cache.get(0).expect("read").is_none(),
            "the unflipped image is another record"
        );
        assert_eq!(
            cache.stats,
            CacheStats {
                computed: 1,
                from_disk: 1,
                from_memory: 0
            }
        );
        let mut warm = EncoderCache::on_disk(root.path(), key()).expect("cache");
        assert!(warm.get(1).expect("read").expect("from disk").equal(&value(1.0)));
        let mut memory = EncoderCache::in_memory();
        memory.put(5, &value(3.0)).expect("put");
        assert!(memory.get(5).expect("read").is_some());
        assert!(memory.store_dir().is_none());
        assert_eq!(memory.stats.from_memory, 1);
    }

    #[test]
    fn reports_round_trip_and_say_where_the_stores_are() {
        let out = tempfile::tempdir().expect("tempdir");
        assert!(CacheReport::read(out.path()).is_none());
        let report = CacheReport {
            latents: CacheStats {
                computed: 3,
                from_disk: 9,
                from_memory: 0,
            },
            captions: CacheStats::default(),
            stores: vec![PathBuf::from("/c/latents-ab")],
        };
        report.write(out.path()).expect("write");
        assert_eq!(CacheReport::read(out.path()), Some(report.clone()));
        let line = report.summary();
        assert!(
            line.contains("inputs 3 encoded, 9 read back") && line.contains("/c/latents-ab"),
            "{line}"
        );
    }
}
