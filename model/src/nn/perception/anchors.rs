//! Anchor boxes: one size per level (4 × stride) × the configured aspect ratios, centred on
//! each cell, ordered (level, y, x, anchor) like the head's outputs.

use tch::{Device, Kind, Tensor};

/// Anchor size as a multiple of the level's stride.
pub const SIZE_PER_STRIDE: f64 = 4.0;

/// Anchors `[Σ H·W·A, 4]` (xyxy, pixels) for feature maps of `sizes` on an image of
/// `image` (h, w) pixels.
pub fn anchors(sizes: &[(i64, i64)], image: (i64, i64), ratios: &[f64], device: Device) -> Tensor {
    let mut all = Vec::with_capacity(sizes.len());
    for &(h, w) in sizes {
        let (sy, sx) = (image.0 as f64 / h as f64, image.1 as f64 / w as f64);
        let size = SIZE_PER_STRIDE * sy.max(sx);
        // Base boxes for each ratio r = h/w at constant area size².
        let base: Vec<f32> = ratios
            .iter()
            .flat_map(|r| {
                let (hr, wr) = (r.sqrt(), 1.0 / r.sqrt());
                let (bw, bh) = (wr * size, hr * size);
                [
                    (-bw / 2.0) as f32,
                    (-bh / 2.0) as f32,
                    (bw / 2.0) as f32,
                    (bh / 2.0) as f32,
                ]
            })
            .collect();
        let base = Tensor::from_slice(&base).view([1, -1, 4]).to_device(device);
        let ys = (Tensor::arange(h, (Kind::Float, device)) + 0.5) * sy;
        let xs = (Tensor::arange(w, (Kind::Float, device)) + 0.5) * sx;
        let grid = Tensor::meshgrid_indexing(&[&ys, &xs], "ij");
        let (cy, cx) = (grid[0].reshape([-1]), grid[1].reshape([-1]));
        let shifts = Tensor::stack(&[&cx, &cy, &cx, &cy], 1).view([-1, 1, 4]);
        all.push((shifts + base).view([-1, 4]));
    }
    Tensor::cat(&all, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_are_centred_with_the_configured_ratios() {
        let a = anchors(&[(2, 2)], (16, 16), &[0.5, 1.0, 2.0], Device::Cpu);
        assert_eq!(a.size(), [12, 4]);
        // First cell centre (4, 4), stride 8 → size 32; ratio 1 is the second anchor.
        let square: Vec<f32> = Vec::try_from(a.get(1)).unwrap();
        assert_eq!(square, [-12.0, -12.0, 20.0, 20.0]);
        // Ratio 2 (tall): height² / width² = 4 with the same area.
        let tall: Vec<f32> = Vec::try_from(a.get(2)).unwrap();
        let (w, h) = (tall[2] - tall[0], tall[3] - tall[1]);
        assert!((h / w - 2.0).abs() < 1e-5 && ((w * h) - 1024.0).abs() < 1e-2);
    }
}
