//! The runtime knows no destination: outside the command line (which is
//! this product, `outreach-host`), no source file of the host mentions the
//! destination's objects, wire format or fields. Outreach's specifics live
//! in the component, the simulator and what the component's `describe`
//! supplies.

use std::path::{Path, PathBuf};

/// Words only a destination's code has any business with.
const DESTINATION_WORDS: [&str; 4] = ["prospect", "json:api", "customn", "vnd.api+json"];

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Where `text` names the destination: a destination word, a custom field
/// (`custom1`…), or "Outreach" other than in the product's own names
/// (`outreach-host`, `OUTREACH_*` settings).
fn mentions(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut found: Vec<String> = DESTINATION_WORDS
        .iter()
        .filter(|w| lower.contains(*w))
        .map(|w| (*w).to_owned())
        .collect();
    for (at, _) in lower.match_indices("custom") {
        let digits = lower[at + 6..]
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
        if digits > 0 {
            found.push(lower[at..at + 6 + digits].to_owned());
        }
    }
    for (at, _) in lower.match_indices("outreach") {
        if !lower[at + 8..].starts_with(['-', '_']) {
            let end = (at + 40).min(lower.len());
            let end = (end..=lower.len())
                .find(|i| lower.is_char_boundary(*i))
                .unwrap_or(lower.len());
            found.push(lower[at..end].to_owned());
        }
    }
    found
}

#[test]
fn no_runtime_module_names_the_destination() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let runtime: Vec<_> = files
        .into_iter()
        .filter(|f| !f.starts_with(src.join("cli")) && *f != src.join("main.rs"))
        .collect();
    assert!(runtime.len() > 30, "the host's modules were not found");
    let offending: Vec<String> = runtime
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            mentions(&text)
                .into_iter()
                .map(move |m| format!("{}: {m}", file.display()))
        })
        .collect();
    assert!(offending.is_empty(), "{offending:#?}");
}

#[test]
fn the_check_finds_what_it_looks_for() {
    assert_eq!(mentions("let p = prospect_id;"), ["prospect"]);
    assert_eq!(mentions("\"custom12\": 1"), ["custom12"]);
    assert_eq!(mentions("a JSON:API document"), ["json:api"]);
    assert_eq!(mentions("Outreach says no").len(), 1);
    assert!(mentions("run `outreach-host login`; $OUTREACH_JOURNAL").is_empty());
}
