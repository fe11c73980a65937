//! Imports inside the model crate only point down its layers (the README's crate map states
//! them). Every `crate::<module>` path in `src/` outside comments is checked; a new top-level
//! module fails this test until it is given a layer here.

use std::path::{Path, PathBuf};

/// Lowest first; a module may use modules of lower layers only (and itself).
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["hooks", "layout", "runtime", "autocast", "assets", "image_io", "dist"],
    &["ops", "optim", "data"],
    &["nn", "persist"],
    &["diffusion"],
    &["pipeline"],
    &["generate"],
    &["train", "eval"],
    &["executor", "bench"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules that `crate::…` paths in `code` name, grouped imports
/// (`use crate::{a::X, b::{Y, Z}}`, also over several lines) included.
fn crate_paths(code: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The first segment of each top-level item of the group.
            let (mut depth, mut item_start) = (0usize, true);
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[k..]);
                        if !name.is_empty() && name != "self" {
                            found.push(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn model_imports_only_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = Path::new(first.as_os_str())
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .to_string();
        if module == "lib" {
            continue;
        }
        let Some(from) = layer(&module) else {
            wrong.push(format!(
                "{}: module `{module}` has no layer in tests/layers.rs",
                rel.display()
            ));
            continue;
        };
        let code = std::fs::read_to_string(file).expect("readable");
        for target in crate_paths(&code) {
            if target == module || target == "ModelError" {
                continue;
            }
            match layer(&target) {
                Some(to) if to < from => {}
                Some(_) => wrong.push(format!(
                    "{}: `{module}` uses `crate::{target}`, a layer up or beside",
                    rel.display()
                )),
                None => wrong.push(format!("{}: `crate::{target}` has no layer", rel.display())),
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import() {
    // The scanner itself: comments are skipped, paths are found anywhere in a line.
    let code = "// crate::train is only mentioned\nuse crate::pipeline::X;\nlet y = crate::eval::run::f();\n\
                use crate::{\n    data::{A, B},\n    nn::C,\n};";
    assert_eq!(crate_paths(code), ["pipeline", "eval", "data", "nn"]);
    assert!(layer("eval") > layer("pipeline"));
}
