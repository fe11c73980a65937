//! The CLIP BPE tokenizer, giving the same ids as transformers' `CLIPTokenizer` (which since
//! transformers 5 is the `tokenizers` pipeline): the special tokens are matched in the raw text;
//! every other stretch is NFC-normalised, whitespace runs become one space, lower-cased, split by
//! CLIP's pattern, byte-level encoded, and merged by BPE with `</w>` on each word's last symbol.
//! `encode` adds BOS/EOS and truncates/pads to the context length (77), padding with EOS as
//! SD v1.x's tokenizer does.

use std::collections::HashMap;

use sha2::Digest;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::ModelError;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// CLIP's pre-tokenisation pattern (letters runs, single digits, other non-space runs).
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// Merge lines of the CLIP vocabulary used by SD v1.x (of the 262,144 in the file).
const CLIP_MERGES: usize = 49152 - 256 - 2;

/// GPT-2's reversible byte → printable-character map, as (byte, char) pairs in the order the
/// CLIP vocabulary lists them: printable bytes first, then the others mapped above U+0100.
fn byte_chars() -> Vec<(u8, char)> {
    let mut printable: Vec<u32> = (u32::from('!')..=u32::from('~')).collect();
    printable.extend(u32::from('¡')..=u32::from('¬'));
    printable.extend(u32::from('®')..=u32::from('ÿ'));
    let mut pairs: Vec<(u32, u32)> = printable.iter().map(|&b| (b, b)).collect();
    let others = (0..256u32).filter(|b| !printable.contains(b));
    pairs.extend(others.enumerate().map(|(n, b)| (b, 256 + n as u32)));
    pairs
        .into_iter()
        .map(|(b, c)| (b as u8, char::from_u32(c).unwrap_or('\u{FFFD}')))
        .collect()
}

/// Byte → character table of [`byte_chars`].
fn byte_encoder() -> [char; 256] {
    let mut table = ['\0'; 256];
    for (b, c) in byte_chars() {
        table[b as usize] = c;
    }
    table
}

/// A CLIP tokenizer.
#[derive(Debug)]
pub struct ClipTokenizer {
    vocab: HashMap<String, i64>,
    merges: Vec<(String, String)>,
    ranks: HashMap<(String, String), usize>,
    bytes: [char; 256],
    pattern: Regex,
    whitespace: Regex,
    bos: i64,
    eos: i64,
    context: usize,
    cache: Mutex<HashMap<String, Vec<i64>>>,
}

impl ClipTokenizer {
    /// From diffusers' `tokenizer/vocab.json` and `tokenizer/merges.txt`.
    pub fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<Self, ModelError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| ModelError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let vocab: HashMap<String, i64> = serde_json::from_str(&read(vocab_json)?).map_err(|e| ModelError::Config {
            path: vocab_json.to_path_buf(),
            message: format!("not a token → id JSON object: {e}"),
        })?;
        let text = read(merges_txt)?;
        let merges: Vec<&str> = text.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
        Self::build(vocab, &merges, merges_txt)
    }

    /// From open_clip's `bpe_simple_vocab_16e6.txt.gz`: the 49,408-token vocabulary of SD v1.x.
    pub fn from_bpe_gz(path: &Path) -> Result<Self, ModelError> {
        let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(|source| ModelError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let merges: Vec<&str> = text.lines().skip(1).take(CLIP_MERGES).collect();
        if merges.len() != CLIP_MERGES {
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                message: format!("has {} merge lines, CLIP needs {CLIP_MERGES}", merges.len()),
            });
        }
        let chars: Vec<char> = byte_chars().into_iter().map(|(_, c)| c).collect();
        let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        tokens.extend(chars.iter().map(|c| format!("{c}</w>")));
        for m in &merges {
            tokens.push(m.split_whitespace().collect::<String>());
        }
        tokens.push(BOS.into());
        tokens.push(EOS.into());
        let vocab = tokens.into_iter().enumerate().map(|(i, t)| (t, i as i64)).collect();
        Self::build(vocab, &merges, path)
    }

    fn build(vocab: HashMap<String, i64>, merges: &[&str], origin: &Path) -> Result<Self, ModelError> {
        let bad = |message: String| ModelError::Config {
            path: origin.to_path_buf(),
            message,
        };
        let mut pairs = Vec::with_capacity(merges.len());
        for (i, line) in merges.iter().enumerate() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => pairs.push((a.to_string(), b.to_string())),
                _ => return Err(bad(format!("merge line {} is not two symbols: {line:?}", i + 2))),
            }
        }
        let ranks = pairs.iter().cloned().enumerate().map(|(i, p)| (p, i)).collect();
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| bad(format!("vocabulary has no `{t}`")))
        };
        let (bos, eos) = (id(BOS)?, id(EOS)?);
        Ok(Self {
            vocab,
            merges: pairs,
            ranks,
            bytes: byte_encoder(),
            pattern: Regex::new(PATTERN).map_err(|e| bad(e.to_string()))?,
            whitespace: Regex::new(r"\s+").map_err(|e| bad(e.to_string()))?,
            bos,
            eos,
            context: 77,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Writes diffusers' `tokenizer/` files (`vocab.json`, `merges.txt`) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let io = |path: PathBuf| {
            move |source| ModelError::Io {
                path: path.clone(),
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        let mut sorted: Vec<(&String, &i64)> = self.vocab.iter().collect();
        sorted.sort_by_key(|(_, id)| **id);
        let map: serde_json::Map<String, serde_json::Value> = sorted
            .into_iter()
            .map(|(t, id)| (t.clone(), serde_json::Value::from(*id)))
            .collect();
        let vocab_path = dir.join("vocab.json");
        std::fs::write(&vocab_path, serde_json::Value::Object(map).to_string()).map_err(io(vocab_path.clone()))?;
        let mut merges = String::from("#version: 0.2\n");
        for (a, b) in &self.merges {
            merges.push_str(&format!("{a} {b}\n"));
        }
        let merges_path = dir.join("merges.txt");
        std::fs::write(&merges_path, merges).map_err(io(merges_path.clone()))
    }

    /// Truncates/pads to `len` tokens instead of 77 (for text encoders with fewer positions).
    pub fn with_context_len(mut self, len: usize) -> Self {
        self.context = len.max(2);
        self
    }

    /// Identifies what this tokenizer makes of a text (vocabulary, merges, context length):
    /// equal fingerprints encode every text to the same ids.
    pub fn fingerprint(&self) -> String {
        let mut vocab: Vec<(&String, &i64)> = self.vocab.iter().collect();
        vocab.sort();
        let mut text = format!("context {}\n", self.context);
        for (token, id) in vocab {
            text.push_str(&format!("{id} {token}\n"));
        }
        for (a, b) in &self.merges {
            text.push_str(&format!("{a} {b}\n"));
        }
        let digest = sha2::Sha256::digest(text.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Tokens per encoded text.
    pub fn context_len(&self) -> usize {
        self.context
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The end-of-text id (also the padding id).
    pub fn eos_id(&self) -> i64 {
        self.eos
    }

    /// Token ids of `text` without BOS/EOS, padding or truncation.
    pub fn tokenize(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next_special = [(BOS, self.bos), (EOS, self.eos)]
                .iter()
                .filter_map(|(s, id)| rest.find(s).map(|at| (at, *s, *id)))
                .min_by_key(|(at, _, _)| *at);
            let (plain, special) = match next_special {
                Some((at, s, id)) => (&rest[..at], Some((s.len(), id))),
                None => (rest, None),
            };
            self.tokenize_plain(plain, &mut ids);
            match special {
                Some((len, id)) => {
                    ids.push(id);
                    rest = &rest[plain.len() + len..];
                }
                None => break,
            }
        }
        ids
    }

    fn tokenize_plain(&self, text: &str, ids: &mut Vec<i64>) {
        let normalized: String = text.nfc().collect();
        let normalized = self.whitespace.replace_all(&normalized, " ").to_lowercase();
        for piece in self.pattern.find_iter(&normalized) {
            let word: String = piece.as_str().bytes().map(|b| self.bytes[b as usize]).collect();
            ids.extend(self.bpe(&word));
        }
    }

    fn bpe(&self, word: &str) -> Vec<i64> {
        if let Ok(cache) = self.cache.lock() {
            if let Some(ids) = cache.get(word) {
                return ids.clone();
            }
        }
        let mut symbols: Vec<String> = word.chars().map(String::from).collect();
        if let Some(last) = symbols.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.ranks.get(&(w[0].clone(), w[1].clone())).map(|r| (*r, i)))
                .min();
            let Some((rank, _)) = best else { break };
            // Merge every occurrence of the best pair, left to right.
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && self.ranks.get(&(symbols[i].clone(), symbols[i + 1].clone())) == Some(&rank)
                {
                    merged.push(format!("{}{}", symbols[i], symbols[i + 1]));
                    i += 2;
                } else {
                    merged.push(symbols[i].clone());
                    i += 1;
                }
            }
            symbols = merged;
        }
        let ids: Vec<i64> = symbols
            .iter()
            .map(|s| self.vocab.get(s).copied().unwrap_or(self.eos))
            .collect();
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(word.to_string(), ids.clone());
        }
        ids
    }

    /// `[BOS] + tokens + [EOS]`, truncated to the context length (EOS kept last) and padded
    /// with EOS: exactly what SD v1.x feeds its text encoder.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::with_capacity(self.context);
        ids.push(self.bos);
        ids.extend(self.tokenize(text).into_iter().take(self.context - 2));
        ids.push(self.eos);
        ids.resize(self.context, self.eos);
        ids
    }

    /// Encodes a batch into an int64 tensor `[B, 77]`.
    pub fn encode_batch(&self, texts: &[&str]) -> tch::Tensor {
        let flat: Vec<i64> = texts.iter().flat_map(|t| self.encode(t)).collect();
        tch::Tensor::from_slice(&flat).view([texts.len() as i64, self.context as i64])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(dir: &Path, extra: &str) -> ClipTokenizer {
        let vocab = format!(r#"{{"a</w>": 0, "b</w>": 1, "{extra}": 2, "{BOS}": 3, "{EOS}": 4}}"#);
        std::fs::write(dir.join("vocab.json"), vocab).expect("vocab");
        std::fs::write(dir.join("merges.txt"), "#version: 0.2\n").expect("merges");
        ClipTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt")).expect("tokenizer")
    }

    #[test]
    fn fingerprints_change_with_vocabulary_and_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = tokenizer(dir.path(), "c</w>").fingerprint();
        assert_eq!(a, tokenizer(dir.path(), "c</w>").fingerprint());
        assert_ne!(a, tokenizer(dir.path(), "d</w>").fingerprint());
        assert_ne!(a, tokenizer(dir.path(), "c</w>").with_context_len(16).fingerprint());
    }
}
