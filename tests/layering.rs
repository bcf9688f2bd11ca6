//! Keeps the layering of docs/design.md true: `main → node → {api, rpc} → raft → {store, pgp}`,
//! with leaves (`metrics`, `certname`) that import no other layer.
//! Greps each layer's sources (a directory, or one file for a one-file layer) for
//! `crate::<layer>` paths it must not use.
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
}

/// The first path segment of every item in `use crate::{...}` groups.
fn use_groups(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("use crate::{") {
        let body = &rest[i + 12..];
        let end = body.find("};").unwrap_or(body.len());
        let mut depth = 0;
        let mut items = vec![String::new()];
        for c in body[..end].chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => items.push(String::new()),
                _ if depth == 0 => items.last_mut().unwrap().push(c),
                _ => {}
            }
        }
        out.push(
            items
                .iter()
                .map(|i| i.trim().split("::").next().unwrap_or("").trim().to_string())
                .collect(),
        );
        rest = &body[end..];
    }
    out
}

#[test]
fn no_layer_imports_a_layer_above_or_beside_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: [(&str, &[&str]); 7] = [
        (
            "certname",
            &[
                "config", "metrics", "pgp", "store", "raft", "api", "rpc", "node", "cli", "client",
            ],
        ),
        (
            "metrics",
            &[
                "config", "pgp", "store", "raft", "api", "rpc", "node", "cli", "client",
            ],
        ),
        (
            "pgp",
            &[
                "store", "raft", "api", "rpc", "node", "cli", "client", "metrics",
            ],
        ),
        (
            "store",
            &[
                "pgp", "raft", "api", "rpc", "node", "cli", "client", "metrics",
            ],
        ),
        ("raft", &["api", "rpc", "node", "cli", "client"]),
        ("api", &["rpc", "store", "node", "cli"]),
        ("rpc", &["api", "store", "node", "cli"]),
    ];
    let mut violations = Vec::new();
    for (layer, forbidden) in rules {
        let mut files = Vec::new();
        let file = root.join(format!("{layer}.rs"));
        if file.is_file() {
            files.push((
                file.display().to_string(),
                std::fs::read_to_string(&file).unwrap(),
            ));
        } else {
            sources(&root.join(layer), &mut files);
        }
        assert!(!files.is_empty(), "src/{layer} has sources");
        for (path, text) in files {
            for bad in forbidden {
                for pat in [
                    format!("crate::{bad}::"),
                    format!("crate::{bad};"),
                    format!("crate::{bad}}}"),
                ] {
                    if text.contains(&pat) {
                        violations.push(format!("{path} uses {pat}"));
                    }
                }
                for group in use_groups(&text) {
                    if group.iter().any(|item| item == bad) {
                        violations.push(format!("{path} imports crate::{bad} in a use group"));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_module_has_a_doc_header() {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let missing: Vec<_> = files
        .iter()
        .filter(|(p, t)| !p.ends_with("tests.rs") && !t.trim_start().starts_with("//!"))
        .map(|(p, _)| p.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a //! header: {missing:?}"
    );
}
