//! Text on pictures: the embedded font (DejaVu Sans, from the `dejavu` crate: no system font is
//! looked up) and line wrapping to a width in pixels.

use std::sync::OnceLock;

use ab_glyph::{FontRef, PxScale};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_text_mut, text_size};

use crate::error::ModelError;

/// The bytes of the embedded font (DejaVu Sans, TrueType): what the pictures are written in.
/// Plot libraries that take a font of their own are given these bytes too.
pub fn font_bytes() -> &'static [u8] {
    dejavu::sans::regular()
}

/// The embedded font, parsed once.
///
/// Errors: [`ModelError::Input`] if the embedded bytes are not a font (a broken build).
pub fn font() -> Result<&'static FontRef<'static>, ModelError> {
    static FONT: OnceLock<Result<FontRef<'static>, String>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(font_bytes()).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| ModelError::Input(format!("the embedded font (DejaVu Sans) does not load: {e}")))
}

/// Text drawn at one size: measures and draws lines.
#[derive(Clone, Copy)]
pub struct Pen {
    font: &'static FontRef<'static>,
    /// Font size in pixels.
    pub size: f32,
}

impl Pen {
    /// A pen of `size` pixels in the embedded font.
    ///
    /// Errors: see [`font`].
    pub fn new(size: f32) -> Result<Self, ModelError> {
        Ok(Self { font: font()?, size })
    }

    /// Width of `text` in pixels.
    pub fn width(&self, text: &str) -> u32 {
        text_size(PxScale::from(self.size), self.font, text).0
    }

    /// Height of a line in pixels (with a little leading).
    pub fn line_height(&self) -> u32 {
        (self.size * 1.25).ceil() as u32
    }

    /// Draws `text` with its top-left corner at (`x`, `y`) pixels; what falls outside is clipped.
    pub fn draw(&self, canvas: &mut RgbImage, colour: [u8; 3], x: i32, y: i32, text: &str) {
        draw_text_mut(canvas, Rgb(colour), x, y, PxScale::from(self.size), self.font, text);
    }

    /// [`wrap`] measured with this pen.
    pub fn wrap(&self, text: &str, max_width: u32, max_lines: usize) -> Vec<String> {
        wrap(text, max_width, max_lines, &|s: &str| self.width(s))
    }

    /// `line` cut to end with "…" within `max_width` pixels (see [`wrap`]).
    pub fn ellipsize(&self, line: &str, max_width: u32) -> String {
        with_ellipsis(line, max_width, &|s: &str| self.width(s))
    }
}

/// Splits `text` into lines no wider than `max_width` pixels (as `measure` measures them), at
/// spaces, and inside words too long for a line. When it would take more than `max_lines`
/// lines, the last one kept is cut and ends with "…". Empty text gives no lines.
pub fn wrap(text: &str, max_width: u32, max_lines: usize, measure: &dyn Fn(&str) -> u32) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let joined = if line.is_empty() {
            word.to_string()
        } else {
            format!("{line} {word}")
        };
        if measure(&joined) <= max_width {
            line = joined;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        // The word alone: broken over lines when it is wider than one.
        for c in word.chars() {
            let longer = format!("{line}{c}");
            if measure(&longer) > max_width && !line.is_empty() {
                lines.push(std::mem::replace(&mut line, c.to_string()));
            } else {
                line = longer;
            }
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            *last = with_ellipsis(last, max_width, measure);
        }
    }
    lines
}

/// `line` shortened until it fits `max_width` pixels with "…" after it.
fn with_ellipsis(line: &str, max_width: u32, measure: &dyn Fn(&str) -> u32) -> String {
    let mut kept: Vec<char> = line.chars().collect();
    loop {
        let text: String = kept.iter().collect::<String>().trim_end().to_string() + "…";
        if kept.is_empty() || measure(&text) <= max_width {
            return text;
        }
        kept.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One pixel per character: widths are lengths.
    fn chars(s: &str) -> u32 {
        s.chars().count() as u32
    }

    #[test]
    fn captions_wrap_at_spaces_and_are_cut_with_an_ellipsis_after_the_last_line() {
        let text = "a red circle left of a cat";
        assert_eq!(wrap(text, 10, 4, &chars), ["a red", "circle", "left of a", "cat"]);
        assert_eq!(wrap(text, 10, 3, &chars), ["a red", "circle", "left of a…"]);
        assert_eq!(wrap(text, 9, 3, &chars), ["a red", "circle", "left of…"]);
        assert!(wrap(text, 10, 3, &chars).iter().all(|l| chars(l) <= 10));
        assert!(wrap("", 10, 3, &chars).is_empty());
        assert_eq!(wrap("short", 100, 3, &chars), ["short"]);
    }

    #[test]
    fn words_wider_than_a_line_are_broken() {
        assert_eq!(wrap("abcdefghijkl", 5, 3, &chars), ["abcde", "fghij", "kl"]);
    }

    #[test]
    fn the_embedded_font_measures_text() {
        let pen = Pen::new(14.0).expect("the embedded font loads");
        assert!(pen.width("caption") > pen.width("cap"));
        let lines = pen.wrap("a small red square above a large blue circle on grass", 120, 3);
        assert!(
            lines.len() > 1 && lines.iter().all(|l| pen.width(l) <= 120),
            "{lines:?}"
        );
    }
}
