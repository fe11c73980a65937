//! The PoG perception head: FPN → (Enh-Fusion) → RetinaNet-style decoupled branches, shared
//! across levels: classification and regression subnets of `head_convs` × (3×3 conv + GroupNorm
//! + ReLU), weights N(0, 0.01), classification bias from the prior 0.01.

use tch::nn::{self, Module};
use tch::{Device, Tensor};

use spatiallock_protocol::model_config::PerceptionConfig;

use super::anchors::anchors;
use super::fpn::Fpn;
use super::fusion::EnhFusion;

/// Prior probability of a positive anchor at initialisation (RetinaNet's 0.01).
const PRIOR: f64 = 0.01;

#[derive(Debug)]
struct Branch {
    convs: Vec<(nn::Conv2D, nn::GroupNorm)>,
    out: nn::Conv2D,
}

/// GroupNorm groups for a width: 32 when it divides, else the largest power of two that does.
fn groups_for(width: i64) -> i64 {
    [32, 16, 8, 4, 2].into_iter().find(|g| width % g == 0).unwrap_or(1)
}

impl Branch {
    fn new(p: nn::Path, width: i64, depth: i64, outputs: i64, bias: f64) -> Self {
        let init = nn::ConvConfig {
            padding: 1,
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 },
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let out_cfg = nn::ConvConfig {
            bs_init: nn::Init::Const(bias),
            ..init
        };
        // GroupNorm after each conv (torchvision's RetinaNet v2): U-Net features are not
        // normalised like a detection backbone's, and the head trains unstably without it.
        let convs = (0..depth)
            .map(|i| {
                let conv = nn::conv2d(&p / "convs" / i, width, width, 3, init);
                let norm = nn::group_norm(&p / "norms" / i, groups_for(width), width, Default::default());
                (conv, norm)
            })
            .collect();
        Self {
            convs,
            out: nn::conv2d(&p / "out", width, outputs, 3, out_cfg),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for (c, n) in &self.convs {
            h = n.forward(&c.forward(&h)).relu();
        }
        self.out.forward(&h)
    }
}

/// Everything the loss and the detector need from one forward pass.
#[derive(Debug)]
pub struct PerceptionOutput {
    /// Classification logits `[B, Σ H·W·A, K]`.
    pub cls: Tensor,
    /// Box deltas `[B, Σ H·W·A, 4]` relative to the anchors.
    pub reg: Tensor,
    /// Anchors `[Σ H·W·A, 4]`, xyxy in image pixels.
    pub anchors: Tensor,
}

/// The perception head.
#[derive(Debug)]
pub struct PerceptionHead {
    fpn: Fpn,
    fusion: Option<EnhFusion>,
    cls: Branch,
    reg: Branch,
    classes: i64,
    ratios: Vec<f64>,
}

impl PerceptionHead {
    /// A head over features of `in_channels` channels at spatial `sizes` (one per level),
    /// predicting `classes` categories; `enh_fusion` switches the transformer on.
    pub fn new(
        p: &nn::Path,
        pc: &PerceptionConfig,
        in_channels: &[i64],
        sizes: &[(i64, i64)],
        classes: i64,
        enh_fusion: bool,
    ) -> Self {
        let width = i64::from(pc.fpn_channels);
        let a = pc.anchor_ratios.len() as i64;
        let tokens: i64 = sizes.iter().map(|(h, w)| h * w).sum();
        let fusion = enh_fusion.then(|| {
            EnhFusion::new(
                p / "fusion",
                width,
                tokens,
                i64::from(pc.fusion_dim),
                i64::from(pc.fusion_depth),
                i64::from(pc.fusion_heads),
            )
        });
        let depth = i64::from(pc.head_convs);
        Self {
            fpn: Fpn::new(p / "fpn", in_channels, width),
            fusion,
            cls: Branch::new(p / "cls_head", width, depth, a * classes, -((1.0 - PRIOR) / PRIOR).ln()),
            reg: Branch::new(p / "reg_head", width, depth, a * 4, 0.0),
            classes,
            ratios: pc.anchor_ratios.clone(),
        }
    }

    /// Number of categories.
    pub fn classes(&self) -> i64 {
        self.classes
    }

    /// Anchors for feature maps of `sizes` on an `image` (h, w).
    pub fn anchors(&self, sizes: &[(i64, i64)], image: (i64, i64), device: Device) -> Tensor {
        anchors(sizes, image, &self.ratios, device)
    }

    /// U-Net features (highest resolution first) of an `image` (h, w) pixels → predictions.
    pub fn forward(&self, features: &[Tensor], image: (i64, i64)) -> PerceptionOutput {
        let mut levels = self.fpn.forward(features);
        if let Some(f) = &self.fusion {
            levels = f.forward(&levels);
        }
        let a = self.ratios.len() as i64;
        let flatten = |t: Tensor, per_anchor: i64| {
            let s = t.size();
            // (B, A·K, H, W) → (B, H, W, A, K) → (B, H·W·A, K), like torchvision.
            t.view([s[0], a, per_anchor, s[2], s[3]])
                .permute([0, 3, 4, 1, 2])
                .reshape([s[0], -1, per_anchor])
        };
        let cls: Vec<Tensor> = levels
            .iter()
            .map(|l| flatten(self.cls.forward(l), self.classes))
            .collect();
        let reg: Vec<Tensor> = levels.iter().map(|l| flatten(self.reg.forward(l), 4)).collect();
        let sizes: Vec<(i64, i64)> = levels.iter().map(|l| (l.size()[2], l.size()[3])).collect();
        let device = features.first().map(|f| f.device()).unwrap_or(Device::Cpu);
        PerceptionOutput {
            cls: Tensor::cat(&cls, 1),
            reg: Tensor::cat(&reg, 1),
            anchors: self.anchors(&sizes, image, device),
        }
    }
}
