//! `cargo xtask ci`: tidy checks, rustfmt, clippy with warnings denied, and every test of the workspace, after
//! installing what the tests need on a fresh machine (the Python ext_proc client's venv, Debian's Chromium).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::procs::{run, run_with_env, workspace_root};

/// The venv of the independent Python ext_proc client (crates/gateway/tests/ext_proc_python.rs reads it here).
const PYTHON_VENV: &str = "target/pyenv-extproc";
/// What the browser test drives (dashboard/tests/browser.rs).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub(crate) fn run_ci() -> anyhow::Result<()> {
    let python = python_venv()?;
    browser()?;
    kubectl()?;
    crate::tidy::check(&workspace_root())?;
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
    let env = [("SWITCHYARD_PYTHON", python.as_os_str())];
    run_with_env("cargo", &["test", "--workspace", "--locked"], &env)?;
    // The dashboard's real-browser test (headless Chromium over WebDriver) is not part of a plain `cargo test`,
    // which must work without Chromium; here it was installed above.
    run("cargo", &["test", "--locked", "-p", "dashboard", "--test", "browser"])?;
    eprintln!("ci: all checks passed");
    Ok(())
}

/// The venv with `envoy-data-plane` (the ext_proc client) and `msgspec` + `pyzmq` (the KV-event decoder), created
/// from PyPI when missing or incomplete; returns its interpreter.
fn python_venv() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let python = root.join(PYTHON_VENV).join("bin/python");
    let usable = || {
        std::process::Command::new(&python)
            .args(["-c", "import envoy_data_plane, grpc, msgspec, zmq"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if !usable() {
        eprintln!("ci: installing the Python test clients into {PYTHON_VENV}");
        run("python3", &["-m", "venv", PYTHON_VENV]).context("creating the venv needs python3 with its venv module")?;
        let pip = root.join(PYTHON_VENV).join("bin/pip");
        run(
            &pip.display().to_string(),
            &[
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                "crates/test-support/python/requirements.txt",
            ],
        )?;
        if !usable() {
            bail!(
                "{} cannot import envoy_data_plane, msgspec and zmq after installing them",
                python.display()
            );
        }
    }
    Ok(python)
}

/// kubectl, for the client-side dry run of deploy/ (no Debian package carries it, so it is not installed here).
fn kubectl() -> anyhow::Result<()> {
    let found = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        bail!(
            "the deploy/ manifest test needs kubectl on PATH: install it (https://kubernetes.io/docs/tasks/tools/), then again"
        );
    }
    Ok(())
}

/// Debian's Chromium and its WebDriver, installed with apt when missing and we are root; otherwise the command to
/// run, before any check has started.
fn browser() -> anyhow::Result<()> {
    let present = || Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if present() {
        return Ok(());
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    if !root {
        bail!("the browser test needs Chromium: run `sudo apt-get install -y chromium chromium-driver`, then again");
    }
    eprintln!("ci: installing chromium and chromium-driver with apt");
    run("apt-get", &["update", "-qq"])?;
    run_with_env(
        "apt-get",
        &["install", "-y", "-qq", "chromium", "chromium-driver"],
        &[("DEBIAN_FRONTEND", "noninteractive".as_ref())],
    )?;
    if !present() {
        bail!("apt installed chromium but {CHROMIUM} or {CHROMEDRIVER} is still missing");
    }
    Ok(())
}
