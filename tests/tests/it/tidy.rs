//! Tidy: the habits the project keeps, checked as a plain test (as rust-analyzer and TigerBeetle
//! do): every Rust file opens with a `//!` comment saying why it exists, and no `dbg!`, `todo!` or
//! `unimplemented!` is left behind.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_file_explains_itself_and_nothing_is_left_unfinished() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let mut files = Vec::new();
    for crate_dir in ["storage", "engine", "bench-harness", "tools", "tests"] {
        rust_files(&root.join(crate_dir), &mut files);
    }
    assert!(files.len() > 30, "found only {} files", files.len());
    let banned = [concat!("dbg", "!("), concat!("todo", "!("), concat!("unimplemented", "!(")];
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        if !text.starts_with("//!") {
            problems.push(format!("{}: does not open with a `//!` comment", file.display()));
        }
        for (n, line) in text.lines().enumerate() {
            if banned.iter().any(|b| line.contains(b)) {
                problems.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "tidy:\n{}", problems.join("\n"));
}
