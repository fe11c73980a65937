//! Writing images: tensors in [-1, 1] to PNG, as readable grids. Each image is upscaled
//! (nearest neighbour) to at least [`MIN_CELL_SIDE`] pixels, its boxes are drawn with their
//! names (input boxes green, detections red with their scores) and its caption is written
//! under it, in the embedded font ([`font_bytes`]: DejaVu Sans, no system fonts).

mod cells;
mod text;

use std::path::Path;

pub use cells::{
    caption_height, grid, labelled_rows, render_cell, upscale_factor, CAPTION_LINES, GAP, LABEL_WIDTH, MIN_CELL_SIDE,
};
pub use image::RgbImage;
pub use text::{font, font_bytes, wrap, Pen};

use tch::{Kind, Tensor};

use crate::error::ModelError;

/// A box to draw without a label: normalised xyxy and an RGB colour.
pub type DrawBox = ([f32; 4], [u8; 3]);

/// Input boxes are drawn in green, detections in red.
pub const INPUT_COLOUR: [u8; 3] = [40, 220, 60];
/// Colour of detected boxes.
pub const DETECTED_COLOUR: [u8; 3] = [230, 40, 40];

/// A box to draw with its name.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledBox {
    /// Normalised xyxy (fractions of the image's width and height).
    pub bbox: [f32; 4],
    /// RGB colour of the outline and of the label's background.
    pub colour: [u8; 3],
    /// The text beside the box (a category name, with a score for detections); empty: none.
    pub label: String,
}

/// What is drawn on and under one image of a grid.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cell {
    /// Boxes drawn on the image, in this order.
    pub boxes: Vec<LabelledBox>,
    /// The caption written under the image (wrapped, at most [`CAPTION_LINES`] lines).
    pub caption: String,
}

/// The images of `images` `[B, 3, H, W]` (values in [-1, 1]) as 8-bit RGB pictures.
///
/// Errors: [`ModelError::Shape`] unless `[B, 3, H, W]`; libtorch errors.
pub fn to_rgb(images: &Tensor) -> Result<Vec<RgbImage>, ModelError> {
    let (b, c, h, w) = images.size4().map_err(ModelError::Torch)?;
    if c != 3 {
        return Err(ModelError::shape("images", "[B, 3, H, W]", &images.size()));
    }
    let pixels = ((images.to_kind(Kind::Float).clamp(-1.0, 1.0) + 1.0) * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous();
    let data = Vec::<u8>::try_from(pixels.view([-1])).map_err(ModelError::Torch)?;
    let (b, h, w) = (b as usize, h as usize, w as usize);
    (0..b)
        .map(|i| {
            RgbImage::from_raw(w as u32, h as u32, data[i * h * w * 3..(i + 1) * h * w * 3].to_vec())
                .ok_or_else(|| ModelError::Input(format!("image {i} does not fill {w}×{h} pixels")))
        })
        .collect()
}

/// An 8-bit RGB picture as a `[3, H, W]` float tensor in [-1, 1]: the inverse of [`to_rgb`] up
/// to its rounding to 8 bits.
///
/// Errors: libtorch errors.
pub fn from_rgb(picture: &RgbImage) -> Result<Tensor, ModelError> {
    let (w, h) = picture.dimensions();
    Ok(Tensor::f_from_slice(picture.as_raw().as_slice())?
        .f_view([i64::from(h), i64::from(w), 3])?
        .f_permute([2, 0, 1])?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(127.5)?
        .f_sub_scalar(1.0)?)
}

/// Writes `images` `[B, 3, H, W]` (values in [-1, 1]) as one PNG grid with `cols` columns,
/// each image rendered as a cell ([`render_cell`]) with `cells[i]` drawn on image `i` (images
/// without an entry get none). Captions take [`caption_height`] pixels under every cell when
/// any image has one. A `W`-pixel image becomes a cell `W × upscale_factor` pixels wide
/// (32 → 256), [`GAP`] pixels apart.
///
/// Errors: the tensor's shape, the font, writing the file ([`ModelError::Io`] naming it).
pub fn save_cells(path: &Path, images: &Tensor, cells: &[Cell], cols: usize) -> Result<(), ModelError> {
    let pictures = to_rgb(images)?;
    let with_captions = cells.iter().any(|c| !c.caption.trim().is_empty());
    let empty = Cell::default();
    let rendered = pictures
        .iter()
        .enumerate()
        .map(|(i, p)| render_cell(p, cells.get(i).unwrap_or(&empty), with_captions))
        .collect::<Result<Vec<_>, _>>()?;
    write_png(path, &grid(&rendered, cols))
}

/// Writes `images` `[B, 3, H, W]` (values in [-1, 1]) at their own resolution as one PNG grid
/// with `cols` columns and no gaps, drawing `boxes[i]` on image `i` with one-pixel outlines:
/// the generated pixels as they are (`spatiallock sample`). [`save_cells`] writes the readable
/// pictures.
///
/// Errors: the tensor's shape; writing the file ([`ModelError::Io`] naming it).
pub fn save_grid(path: &Path, images: &Tensor, boxes: &[Vec<DrawBox>], cols: usize) -> Result<(), ModelError> {
    let pictures = to_rgb(images)?;
    let (w, h) = pictures.first().map_or((1, 1), |p| (p.width(), p.height()));
    let cols = cols.clamp(1, pictures.len().max(1));
    let rows = pictures.len().div_ceil(cols).max(1);
    let mut out = RgbImage::new(cols as u32 * w, rows as u32 * h);
    for (i, picture) in pictures.iter().enumerate() {
        let (ox, oy) = ((i % cols) as u32 * w, (i / cols) as u32 * h);
        image::imageops::replace(&mut out, picture, i64::from(ox), i64::from(oy));
        for (bx, colour) in boxes.get(i).into_iter().flatten() {
            let px = |v: f32, n: u32| ((v.clamp(0.0, 1.0) * n as f32) as u32).min(n.saturating_sub(1));
            let (x0, y0, x1, y1) = (px(bx[0], w), px(bx[1], h), px(bx[2], w), px(bx[3], h));
            for x in x0..=x1 {
                out.put_pixel(ox + x, oy + y0, image::Rgb(*colour));
                out.put_pixel(ox + x, oy + y1, image::Rgb(*colour));
            }
            for y in y0..=y1 {
                out.put_pixel(ox + x0, oy + y, image::Rgb(*colour));
                out.put_pixel(ox + x1, oy + y, image::Rgb(*colour));
            }
        }
    }
    write_png(path, &out)
}

fn image_error(path: &Path, e: image::ImageError) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Writes `picture` as a PNG file.
///
/// Errors: [`ModelError::Io`] naming the file.
pub fn write_png(path: &Path, picture: &RgbImage) -> Result<(), ModelError> {
    picture
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| image_error(path, e))
}

/// Decodes an image held in memory (PNG or JPEG, such as a `GET /v1/jobs/{id}/files/{name}`
/// answer) as 8-bit RGB; `origin` names where the bytes came from in errors.
///
/// Errors: [`ModelError::Io`] naming `origin` when the bytes are not an image.
pub fn decode_rgb(bytes: &[u8], origin: &str) -> Result<RgbImage, ModelError> {
    Ok(image::load_from_memory(bytes)
        .map_err(|e| image_error(Path::new(origin), e))?
        .to_rgb8())
}

/// Reads an image file (PNG or JPEG) as 8-bit RGB.
///
/// Errors: [`ModelError::Io`] naming the file (missing, unreadable, not an image).
pub fn read_rgb(path: &Path) -> Result<RgbImage, ModelError> {
    Ok(image::open(path).map_err(|e| image_error(path, e))?.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_of_32_pixel_images_has_256_pixel_cells_with_captions_under_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("grid.png");
        let images = Tensor::zeros([3, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
        let cell = |caption: &str| Cell {
            boxes: vec![LabelledBox {
                bbox: [0.2, 0.2, 0.8, 0.8],
                colour: DETECTED_COLOUR,
                label: "square 0.87".into(),
            }],
            caption: caption.into(),
        };
        save_cells(
            &path,
            &images,
            &[cell("a square"), cell(""), cell("a long caption ".repeat(30).as_str())],
            2,
        )
        .expect("write");
        let grid = read_rgb(&path).expect("read");
        let cell_h = 256 + caption_height(true);
        assert_eq!((grid.width(), grid.height()), (2 * 256 + 3 * GAP, 2 * cell_h + 3 * GAP));
        // Mid-grey pixels (value 0 in [-1, 1]) upscaled.
        assert_eq!(*grid.get_pixel(GAP + 5, GAP + 250), image::Rgb([128, 128, 128]));

        save_cells(&path, &images, &[], 3).expect("write");
        let bare = read_rgb(&path).expect("read");
        assert_eq!(
            (bare.width(), bare.height()),
            (3 * 256 + 4 * GAP, 256 + 2 * GAP),
            "no captions, no room for them"
        );
        // `save_grid`: the pixels as generated, boxes one pixel wide.
        save_grid(&path, &images, &[vec![([0.0, 0.0, 1.0, 1.0], INPUT_COLOUR)]], 3).expect("write");
        let raw = read_rgb(&path).expect("read");
        assert_eq!((raw.width(), raw.height()), (3 * 32, 32));
        assert_eq!(*raw.get_pixel(31, 5), image::Rgb(INPUT_COLOUR));
        assert_eq!(*raw.get_pixel(32, 5), image::Rgb([128, 128, 128]));
    }

    #[test]
    fn a_missing_image_file_is_named() {
        let e = read_rgb(Path::new("/nonexistent/strip.png")).unwrap_err();
        assert!(format!("{e}").contains("/nonexistent/strip.png"), "{e}");
    }
}
