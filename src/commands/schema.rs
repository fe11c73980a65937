//! `spatiallock schema [--output FILE]`: the JSON Schema (draft 2020-12) of the experiment-grid
//! format, generated from the protocol types: every field with its type, default and unit.
//! Editors use it through a `# yaml-language-server: $schema=FILE` first line in a grid.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use spatiallock_protocol::schema::grid_schema_text;

/// Arguments of `schema`.
#[derive(Args, Debug)]
pub struct SchemaArgs {
    /// Write the schema to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Prints (or writes) the grid schema as pretty JSON.
pub fn run(args: &SchemaArgs) -> anyhow::Result<()> {
    let text = grid_schema_text().context("writing the grid schema as JSON")?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote the grid schema to {}", path.display());
        }
        None => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`spatiallock schema | head`) ends the output quietly.
            if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(e).context("cannot write to standard output");
                }
            }
        }
    }
    Ok(())
}
