//! `cargo xtask ci`: tidy checks, rustfmt, clippy with warnings denied, and every test of the workspace.

use std::path::Path;

use anyhow::bail;

use crate::procs::{run, workspace_root};

pub(crate) fn run_ci() -> anyhow::Result<()> {
    tidy(&workspace_root())?;
    run("cargo", &["fmt", "--all", "--", "--check"])?;
    crate::codegen::check()?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    run("cargo", &["test", "--workspace", "--locked"])?;
    // The dashboard's real-browser test (headless Chromium over WebDriver) is not part of `cargo test` because it
    // needs Debian's chromium and chromium-driver, which .ci/run installs.
    run("cargo", &["test", "--locked", "-p", "dashboard", "--test", "browser"])?;
    eprintln!("ci: all checks passed");
    Ok(())
}

/// Every Rust file starts with a `//!` line saying what it is (ARCHITECTURE.md relies on it for the code map).
pub(crate) fn tidy(root: &Path) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    visit(root, &mut |path| {
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if !text.starts_with("//!") {
                missing.push(path.strip_prefix(root).unwrap_or(path).display().to_string());
            }
        }
    })?;
    if !missing.is_empty() {
        bail!(
            "tidy: these files do not start with a `//!` doc line:\n  {}",
            missing.join("\n  ")
        );
    }
    eprintln!("tidy: every Rust file has a //! header");
    Ok(())
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path)) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name == "target" || name.starts_with('.') || name == "node_modules" {
                continue;
            }
            visit(&path, f)?;
        } else {
            f(&path);
        }
    }
    Ok(())
}
