//! TensorBoard event files, written without TensorFlow (there is no maintained writer crate).
//!
//! The format is TensorFlow's: a file `events.out.tfevents.<seconds>.<host>` in a run folder
//! holds TFRecords (`tensorflow/core/lib/io/record_writer.cc`): each record is its length as a
//! little-endian u64, the masked CRC32C of those 8 bytes (u32 LE), the data, and the masked
//! CRC32C of the data (u32 LE), where `mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`
//! (wrapping). Each record's data is a `tensorflow.Event` protobuf
//! (`tensorflow/core/util/event.proto`); the first says `file_version: "brain.Event:2"`, the
//! others carry a `Summary` (`tensorflow/core/framework/summary.proto`) of scalar values
//! (`simple_value`), tagged by name, at a step. The messages below declare only the fields we
//! write, with the field numbers of those files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

/// `tensorflow.Event` (event.proto): `wall_time = 1`, `step = 2`, and of the `what` oneof
/// `file_version = 3` and `summary = 5` (at most one is set).
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    wall_time: f64,
    /// The global step.
    #[prost(int64, tag = "2")]
    step: i64,
    /// `brain.Event:2` in a file's first event.
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    /// Scalar values.
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

/// `tensorflow.Summary` (summary.proto): `repeated Value value = 1`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: `tag = 1` and, of the `value` oneof, `simple_value = 2` (set even
/// when 0, so a zero is a value rather than nothing).
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    /// The series' name.
    #[prost(string, tag = "1")]
    tag: String,
    /// The scalar.
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// The file version TensorBoard expects in an event file's first event.
const FILE_VERSION: &str = "brain.Event:2";

/// TFRecord's checksum: the CRC32C of `data`, rotated right by 15 bits plus a constant (so
/// that a CRC over data that holds CRCs stays strong).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord: length, its masked CRC, data, the data's masked CRC.
pub fn tf_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// One event file being written (one TensorBoard run is a folder of them).
pub struct EventFile {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventFile {
    /// Creates `run_dir` (and its parents) when missing and a new event file in it,
    /// `events.out.tfevents.<seconds>.<host>`, beginning with the file-version event;
    /// `wall_time` is in seconds since the Unix epoch.
    ///
    /// Errors: the folder or the file cannot be created or written.
    pub fn create(run_dir: &Path, wall_time: f64) -> std::io::Result<EventFile> {
        std::fs::create_dir_all(run_dir)?;
        let path = run_dir.join(format!(
            "events.out.tfevents.{}.{}",
            wall_time.max(0.0) as u64,
            super::service::host_name().replace(['/', '\\'], "_")
        ));
        let mut file = EventFile {
            out: BufWriter::new(File::create(&path)?),
            path,
        };
        file.write_event(&Event {
            wall_time,
            step: 0,
            file_version: Some(FILE_VERSION.into()),
            summary: None,
        })?;
        Ok(file)
    }

    fn write_event(&mut self, event: &Event) -> std::io::Result<()> {
        self.out.write_all(&tf_record(&event.encode_to_vec()))
    }

    /// Appends one event holding the scalar `values` (tag, value) at `step`.
    ///
    /// Errors: the file cannot be written.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f32)], wall_time: f64) -> std::io::Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: (*tag).to_string(),
                simple_value: Some(*v),
            })
            .collect();
        self.write_event(&Event {
            wall_time,
            step,
            file_version: None,
            summary: Some(Summary { value }),
        })
    }

    /// Flushes the file to disk and returns its path.
    ///
    /// Errors: the last writes fail.
    pub fn finish(mut self) -> std::io::Result<PathBuf> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_known_values() {
        // The CRC-32C check value (RFC 3720 / iSCSI: "123456789").
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // Every TensorBoard event file starts with the 24-byte file-version event: its length
        // and that length's masked CRC are the same 12 bytes in every file TensorFlow writes.
        assert_eq!(
            masked_crc32c(&24u64.to_le_bytes()).to_le_bytes(),
            [0xa3, 0x7f, 0x4b, 0x22]
        );
    }

    #[test]
    fn a_file_starts_with_the_file_version_record() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut file = EventFile::create(&dir.path().join("run"), 1_700_000_000.5).expect("created");
        file.scalars(3, &[("loss", 0.0), ("lr", 1e-3)], 1_700_000_001.0)
            .expect("written");
        let path = file.finish().expect("flushed");
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(name.starts_with("events.out.tfevents.1700000000."), "{name}");
        let bytes = std::fs::read(&path).expect("readable");
        assert_eq!(
            bytes[..12],
            [0x18, 0, 0, 0, 0, 0, 0, 0, 0xa3, 0x7f, 0x4b, 0x22],
            "a 24-byte first record"
        );
        let first = Event::decode(&bytes[12..36]).expect("the first event decodes");
        assert_eq!(first.file_version.as_deref(), Some(FILE_VERSION));
        let rest = &bytes[40..];
        let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
        assert_eq!(
            u32::from_le_bytes(rest[12 + len..16 + len].try_into().expect("4 bytes")),
            masked_crc32c(&rest[12..12 + len])
        );
        let second = Event::decode(&rest[12..12 + len]).expect("the second event decodes");
        assert_eq!(second.step, 3);
        let values = second.summary.expect("a summary").value;
        assert_eq!(values.len(), 2);
        assert_eq!((values[0].tag.as_str(), values[0].simple_value), ("loss", Some(0.0)));
        assert_eq!(rest.len(), 16 + len, "two records, nothing else");
    }
}
