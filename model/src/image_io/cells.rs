//! Laying pictures out: a cell (one image upscaled, its boxes with their names, its caption
//! below), a grid of cells, and rows of pictures with a label column on the left.

use image::{imageops, Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut};
use imageproc::rect::Rect;

use super::text::Pen;
use super::Cell;
use crate::error::ModelError;

/// Images are upscaled to at least this many pixels on their shorter side.
pub const MIN_CELL_SIDE: u32 = 256;
/// Pixels around and between the cells of a grid.
pub const GAP: u32 = 8;
/// Caption lines under a cell; longer captions are cut with "…".
pub const CAPTION_LINES: usize = 3;
/// Width in pixels of the label column of [`labelled_rows`].
pub const LABEL_WIDTH: u32 = 240;

const CAPTION_PX: f32 = 15.0;
const BOX_LABEL_PX: f32 = 13.0;
const LABEL_PX: f32 = 15.0;
const PAD: u32 = 6;
const WHITE: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [30, 30, 30];
const BACKGROUND: [u8; 3] = [228, 228, 228];
const OUTLINE: [u8; 3] = [20, 20, 20];

/// The nearest-neighbour upscaling factor for a `width` × `height` pixel image: the smallest
/// integer bringing its shorter side to at least [`MIN_CELL_SIDE`] (32 px → 8), at least 1.
pub fn upscale_factor(width: u32, height: u32) -> u32 {
    MIN_CELL_SIDE.div_ceil(width.min(height).max(1)).max(1)
}

/// Height in pixels of the caption area under a cell (0 without captions).
pub fn caption_height(with_captions: bool) -> u32 {
    if !with_captions {
        return 0;
    }
    PAD + CAPTION_LINES as u32 * (CAPTION_PX * 1.25).ceil() as u32 + PAD
}

/// `image` upscaled by [`upscale_factor`] with nearest-neighbour sampling, `cell`'s boxes drawn
/// on it with their labels, and its caption wrapped under it (in an area of
/// [`caption_height`]`(with_caption)` pixels).
///
/// Errors: the embedded font does not load.
pub fn render_cell(image: &RgbImage, cell: &Cell, with_caption: bool) -> Result<RgbImage, ModelError> {
    let f = upscale_factor(image.width(), image.height());
    let (w, h) = (image.width() * f, image.height() * f);
    let mut canvas = RgbImage::from_pixel(w, h + caption_height(with_caption), Rgb(WHITE));
    for (x, y, p) in canvas.enumerate_pixels_mut() {
        if y < h {
            *p = *image.get_pixel(x / f, y / f);
        }
    }
    let to_px = |v: f32, n: u32| (v.clamp(0.0, 1.0) * n as f32).round() as i32;
    let tag_pen = Pen::new(BOX_LABEL_PX)?;
    let mut tags = Vec::new();
    for b in &cell.boxes {
        let (x0, y0) = (to_px(b.bbox[0], w), to_px(b.bbox[1], h));
        let (x1, y1) = (to_px(b.bbox[2], w).max(x0 + 2), to_px(b.bbox[3], h).max(y0 + 2));
        // Two pixels of colour between one-pixel dark edges: visible on any background.
        for (inset, colour) in [(-1, OUTLINE), (0, b.colour), (1, b.colour), (2, OUTLINE)] {
            let (bw, bh) = ((x1 - x0 - 2 * inset).max(1), (y1 - y0 - 2 * inset).max(1));
            let rect = Rect::at(x0 + inset, y0 + inset).of_size(bw as u32, bh as u32);
            draw_hollow_rect_mut(&mut canvas, rect, Rgb(colour));
        }
        if !b.label.is_empty() {
            tags.push(((x0, y0, y1), b));
        }
    }
    // The names go on top of every outline, each where it covers no other name.
    let mut placed: Vec<Rect> = Vec::new();
    for ((x0, y0, y1), b) in tags {
        let (tw, th) = (tag_pen.width(&b.label) + 4, tag_pen.line_height());
        let x = x0.min(w as i32 - tw as i32).max(0);
        let fits = |y: i32| y >= 0 && y + th as i32 <= h as i32;
        let candidates: Vec<Rect> = [y0 - th as i32, y0 + 2, y1 + 1, y1 - th as i32 - 2]
            .into_iter()
            .filter(|y| fits(*y))
            .map(|y| Rect::at(x, y).of_size(tw, th))
            .collect();
        let Some(first) = candidates.first().copied() else {
            continue;
        };
        let tag = candidates
            .into_iter()
            .find(|r| placed.iter().all(|p| r.intersect(*p).is_none()))
            .unwrap_or(first);
        draw_filled_rect_mut(&mut canvas, tag, Rgb(b.colour));
        tag_pen.draw(&mut canvas, ink_on(b.colour), tag.left() + 2, tag.top() + 1, &b.label);
        placed.push(tag);
    }
    if with_caption {
        let pen = Pen::new(CAPTION_PX)?;
        let lines = pen.wrap(&cell.caption, w.saturating_sub(2 * PAD), CAPTION_LINES);
        for (i, line) in lines.iter().enumerate() {
            let y = h + PAD + i as u32 * pen.line_height();
            pen.draw(&mut canvas, INK, PAD as i32, y as i32, line);
        }
    }
    Ok(canvas)
}

/// Black text on light colours, white on dark ones.
fn ink_on(colour: [u8; 3]) -> [u8; 3] {
    let luma = 0.299 * f32::from(colour[0]) + 0.587 * f32::from(colour[1]) + 0.114 * f32::from(colour[2]);
    if luma > 140.0 {
        [0, 0, 0]
    } else {
        WHITE
    }
}

/// Rendered cells (all the size of the first) in a grid of `cols` columns, [`GAP`] pixels
/// around and between them.
pub fn grid(cells: &[RgbImage], cols: usize) -> RgbImage {
    let (cw, ch) = cells.first().map_or((0, 0), |c| (c.width(), c.height()));
    let cols = cols.clamp(1, cells.len().max(1));
    let rows = cells.len().div_ceil(cols);
    let (cols, rows) = (cols as u32, rows as u32);
    let mut out = RgbImage::from_pixel(
        cols * cw + (cols + 1) * GAP,
        rows * ch + (rows + 1) * GAP,
        Rgb(BACKGROUND),
    );
    for (i, cell) in cells.iter().enumerate() {
        let (c, r) = (i as u32 % cols, i as u32 / cols);
        imageops::replace(
            &mut out,
            cell,
            i64::from(GAP + c * (cw + GAP)),
            i64::from(GAP + r * (ch + GAP)),
        );
    }
    out
}

/// Pictures stacked in rows, each with its label lines in a column of [`LABEL_WIDTH`] pixels
/// on its left (the first line is the heading; lines are wrapped, and cut with "…" when they
/// do not fit the row). Each row is as high as its picture; the result is as wide as the
/// label column and the widest picture.
///
/// Errors: the embedded font does not load.
pub fn labelled_rows(rows: &[(Vec<String>, RgbImage)]) -> Result<RgbImage, ModelError> {
    let width = LABEL_WIDTH + rows.iter().map(|(_, p)| p.width()).max().unwrap_or(0);
    let height = rows.iter().map(|(_, p)| p.height()).sum::<u32>();
    let mut out = RgbImage::from_pixel(width, height.max(1), Rgb(WHITE));
    let pen = Pen::new(LABEL_PX)?;
    let mut top = 0u32;
    for (lines, picture) in rows {
        imageops::replace(&mut out, picture, i64::from(LABEL_WIDTH), i64::from(top));
        let room = (picture.height().saturating_sub(2 * PAD) / pen.line_height()).max(1) as usize;
        let mut wrapped: Vec<String> = Vec::new();
        for line in lines {
            wrapped.extend(pen.wrap(line, LABEL_WIDTH - 2 * PAD, usize::MAX));
        }
        if wrapped.len() > room {
            wrapped.truncate(room);
            if let Some(last) = wrapped.last_mut() {
                *last = pen.ellipsize(last, LABEL_WIDTH - 2 * PAD);
            }
        }
        for (i, line) in wrapped.iter().enumerate() {
            let y = top + PAD + i as u32 * pen.line_height();
            pen.draw(&mut out, INK, PAD as i32, y as i32, line);
        }
        if top > 0 {
            draw_filled_rect_mut(
                &mut out,
                Rect::at(0, top as i32).of_size(width, 1),
                Rgb([160, 160, 160]),
            );
        }
        top += picture.height();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::LabelledBox;
    use super::*;

    fn cell(caption: &str) -> Cell {
        Cell {
            boxes: vec![LabelledBox {
                bbox: [0.1, 0.0, 0.6, 0.5],
                colour: [40, 220, 60],
                label: "circle".into(),
            }],
            caption: caption.into(),
        }
    }

    #[test]
    fn a_32_pixel_image_becomes_a_256_pixel_cell() {
        assert_eq!(upscale_factor(32, 32), 8);
        assert_eq!(upscale_factor(64, 48), 6, "the shorter side decides");
        assert_eq!(upscale_factor(512, 512), 1);
        let image = RgbImage::from_pixel(32, 32, Rgb([10, 20, 30]));
        let out = render_cell(&image, &cell("a green circle"), true).expect("render");
        assert_eq!(out.width(), 256);
        assert_eq!(out.height(), 256 + caption_height(true));
        // Nearest neighbour: the image's pixels are blocks of 8 × 8.
        assert_eq!(*out.get_pixel(255, 255), Rgb([10, 20, 30]));
        // The box outline is drawn at the upscaled position, x = 0.1 × 256.
        assert_eq!(*out.get_pixel(26, 100), Rgb([40, 220, 60]));
        let bare = render_cell(&image, &Cell::default(), false).expect("render");
        assert_eq!((bare.width(), bare.height()), (256, 256));
    }

    #[test]
    fn grids_and_rows_have_the_sizes_of_their_parts() {
        let c = RgbImage::new(256, 300);
        let g = grid(&[c.clone(), c.clone(), c.clone(), c.clone()], 4);
        assert_eq!((g.width(), g.height()), (4 * 256 + 5 * GAP, 300 + 2 * GAP));
        let g = grid(&[c.clone(), c.clone(), c.clone()], 2);
        assert_eq!((g.width(), g.height()), (2 * 256 + 3 * GAP, 2 * 300 + 3 * GAP));
        let strip = RgbImage::new(500, 320);
        let rows = vec![
            (vec!["trial 0".to_string(), "components = PoI".into()], strip.clone()),
            (vec!["trial 1 with a very long label".repeat(20)], strip),
        ];
        let out = labelled_rows(&rows).expect("rows");
        assert_eq!((out.width(), out.height()), (LABEL_WIDTH + 500, 640));
    }
}
