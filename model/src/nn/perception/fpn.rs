//! Feature pyramid: lateral 1×1 convs to a common width, top-down nearest upsampling and
//! addition, 3×3 output convs (torchvision's FPN without extra levels).

use tch::nn::{self, Module};
use tch::Tensor;

/// The FPN over the U-Net's down-block outputs.
#[derive(Debug)]
pub struct Fpn {
    lateral: Vec<nn::Conv2D>,
    output: Vec<nn::Conv2D>,
}

impl Fpn {
    /// One lateral and one output conv per input level of `in_channels[i]` channels.
    pub fn new(p: nn::Path, in_channels: &[i64], width: i64) -> Self {
        let conv3 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        Self {
            lateral: in_channels
                .iter()
                .enumerate()
                .map(|(i, &c)| nn::conv2d(&p / "lateral" / i as i64, c, width, 1, Default::default()))
                .collect(),
            output: (0..in_channels.len())
                .map(|i| nn::conv2d(&p / "output" / i as i64, width, width, 3, conv3))
                .collect(),
        }
    }

    /// Features from the highest resolution down → pyramid levels in the same order.
    pub fn forward(&self, features: &[Tensor]) -> Vec<Tensor> {
        let lat: Vec<Tensor> = self.lateral.iter().zip(features).map(|(c, f)| c.forward(f)).collect();
        let mut merged: Vec<Tensor> = Vec::with_capacity(lat.len());
        let mut above: Option<Tensor> = None;
        for l in lat.iter().rev() {
            let m = match &above {
                Some(top) => {
                    let size = l.size();
                    l + top.upsample_nearest2d([size[2], size[3]], None, None)
                }
                None => l.shallow_clone(),
            };
            above = Some(m.shallow_clone());
            merged.push(m);
        }
        merged.reverse();
        merged.iter().zip(&self.output).map(|(m, c)| c.forward(m)).collect()
    }
}
