//! Tidy: textual rules over the whole tree, run first by `cargo xtask ci` and as plain `#[test]`s (so `cargo test`
//! alone enforces them too): every Rust file starts with a `//!` line saying what it is (ARCHITECTURE.md's code map
//! relies on it), and no `todo`, `unimplemented` or `dbg` macro call is left in.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// Macros that mark unfinished or debugging code. Spelled in pieces so this file does not trip its own rule.
const FORBIDDEN: [&str; 3] = [
    concat!("todo", "!("),
    concat!("unimplemented", "!("),
    concat!("dbg", "!("),
];

/// Runs every rule; the error lists each offending file.
pub(crate) fn check(root: &Path) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for path in rust_files(root)? {
        let text = std::fs::read_to_string(&path)?;
        let shown = path.strip_prefix(root).unwrap_or(&path).display().to_string();
        if !text.starts_with("//!") {
            problems.push(format!("{shown}: does not start with a `//!` line saying what it is"));
        }
        for (i, line) in text.lines().enumerate() {
            if let Some(mac) = FORBIDDEN.iter().find(|m| line.contains(*m)) {
                problems.push(format!("{shown}:{}: `{mac}…)` left in", i + 1));
            }
        }
    }
    if !problems.is_empty() {
        bail!("tidy:\n  {}", problems.join("\n  "));
    }
    eprintln!("tidy: every Rust file has a //! header; no todo!, unimplemented! or dbg!");
    Ok(())
}

/// The tree's Rust files, skipping `target/`, hidden folders and `node_modules/`.
fn rust_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !(name == "target" || name.starts_with('.') || name == "node_modules") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_is_tidy() {
        if let Err(err) = check(&crate::procs::workspace_root()) {
            panic!("{err}");
        }
    }

    #[test]
    fn each_rule_catches_its_case() {
        let dir = std::env::temp_dir().join(format!("switchyard-tidy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("target")).unwrap();
        std::fs::write(dir.join("good.rs"), "//! Fine.\nfn main() {}\n").unwrap();
        std::fs::write(dir.join("target/ignored.rs"), "no header\n").unwrap();
        assert!(check(&dir).is_ok());
        std::fs::write(dir.join("bare.rs"), "fn main() {}\n").unwrap();
        std::fs::write(
            dir.join("wip.rs"),
            format!("//! Wip.\nfn f() {{ {}) }}\n", FORBIDDEN[0]),
        )
        .unwrap();
        let err = check(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("bare.rs: does not start with a `//!` line"), "{err}");
        assert!(err.contains("wip.rs:2:"), "{err}");
        assert!(!err.contains("ignored.rs"), "{err}");
    }
}
