//! The host's layers point one way: the cluster is built on what both
//! backends share and never on the single service, and the status page
//! and `/metrics` read a destination through its read model, never by
//! asking which backend delivers it.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                found.push((path, text));
            }
        }
    }
    found
}

fn src(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(relative)
}

/// `(file, word)` for each of `words` a file of `files` contains.
fn naming(files: &[(PathBuf, String)], words: &[&str]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (path, text) in files {
        for word in words {
            if text.contains(word) {
                found.push((path.display().to_string(), (*word).to_owned()));
            }
        }
    }
    found
}

#[test]
fn the_cluster_does_not_import_the_single_service() {
    let found = naming(&sources(&src("cluster")), &["crate::service"]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn pages_and_metrics_read_a_destination_without_asking_its_backend() {
    let mut files = sources(&src("service/admin"));
    files.extend(
        sources(&src("service"))
            .into_iter()
            .filter(|(path, _)| path.file_name().is_some_and(|n| n == "metrics.rs")),
    );
    assert!(files.len() > 5, "the admin pages and metrics.rs were found");
    let found = naming(
        &files,
        &[
            "cluster::",
            "worker()",
            "journaled",
            "Journaled",
            "Journal::open",
            "journal::Journal",
        ],
    );
    assert!(found.is_empty(), "{found:?}");
}
