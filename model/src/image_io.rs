//! Writing images: tensors in [-1, 1] to PNG, in a grid, with boxes drawn on top.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::ModelError;

/// A box to draw: normalised xyxy and an RGB colour.
pub type DrawBox = ([f32; 4], [u8; 3]);

/// Input boxes are drawn in green, detections in red.
pub const INPUT_COLOUR: [u8; 3] = [40, 220, 60];
/// Colour of detected boxes.
pub const DETECTED_COLOUR: [u8; 3] = [230, 40, 40];

/// Writes `images` `[B, 3, H, W]` (values in [-1, 1]) as one PNG grid with `cols` columns,
/// drawing `boxes[i]` on image `i`.
pub fn save_grid(path: &Path, images: &Tensor, boxes: &[Vec<DrawBox>], cols: usize) -> Result<(), ModelError> {
    let (b, c, h, w) = images.size4().map_err(ModelError::Torch)?;
    if c != 3 {
        return Err(ModelError::shape("images", "[B, 3, H, W]", &images.size()));
    }
    let (b, h, w) = (b as usize, h as usize, w as usize);
    let cols = cols.clamp(1, b.max(1));
    let rows = b.div_ceil(cols);
    let pixels = ((images.to_kind(Kind::Float).clamp(-1.0, 1.0) + 1.0) * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .contiguous();
    let data = Vec::<u8>::try_from(pixels.view([-1])).map_err(ModelError::Torch)?;
    let (gw, gh) = (cols * w, rows * h);
    let mut grid = vec![0u8; gw * gh * 3];
    for i in 0..b {
        let (ox, oy) = ((i % cols) * w, (i / cols) * h);
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    grid[((oy + y) * gw + ox + x) * 3 + ch] = data[((i * 3 + ch) * h + y) * w + x];
                }
            }
        }
        for (bx, colour) in boxes.get(i).into_iter().flatten() {
            let px = |v: f32, n: usize| ((v.clamp(0.0, 1.0) * n as f32) as usize).min(n - 1);
            let (x0, y0, x1, y1) = (px(bx[0], w), px(bx[1], h), px(bx[2], w), px(bx[3], h));
            let mut put = |x: usize, y: usize| {
                let at = ((oy + y) * gw + ox + x) * 3;
                grid[at..at + 3].copy_from_slice(colour);
            };
            for x in x0..=x1 {
                put(x, y0);
                put(x, y1);
            }
            for y in y0..=y1 {
                put(x0, y);
                put(x1, y);
            }
        }
    }
    let file = std::fs::File::create(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), gw as u32, gh as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let err = |e: png::EncodingError| ModelError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut writer = encoder.write_header().map_err(err)?;
    writer.write_image_data(&grid).map_err(err)
}
