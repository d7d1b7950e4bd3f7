//! Child processes of the demo and benchmarks: spawned with kill-on-drop, awaited for readiness with a deadline.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// Workspace root (the parent of `xtask/`).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command to completion, failing with its name when it exits non-zero.
pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_with_env(program, args, &[])
}

/// [`run`] with extra environment variables for the child.
pub(crate) fn run_with_env(program: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> anyhow::Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

/// Builds the given binaries in the given profile and returns the directory they are in.
pub(crate) fn build_bins(release: bool, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let mut args = vec!["build", "--quiet"];
    if release {
        args.push("--release");
    }
    for package in packages {
        args.extend(["-p", package]);
    }
    run("cargo", &args)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target.join(if release { "release" } else { "debug" }))
}

/// A child that is killed when dropped, so an error or Ctrl-C in xtask never leaves processes behind.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
}

impl Proc {
    pub(crate) fn spawn(name: &str, program: &Path, args: &[String], log: Option<&Path>) -> anyhow::Result<Proc> {
        let mut command = Command::new(program);
        command.args(args).kill_on_drop(true).stdin(Stdio::null());
        match log {
            Some(path) => {
                let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                command.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
        })
    }

    /// Fails if the process already exited (e.g. a port was taken).
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace` before killing it.
    pub(crate) async fn stop(mut self, grace: Duration) {
        #[cfg(unix)]
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// Polls `url` until it answers 200, the deadline passes, or one of `procs` dies.
pub(crate) async fn wait_ready(url: &str, deadline: Duration, procs: &mut [&mut Proc]) -> anyhow::Result<()> {
    wait_ready_with(url, None, deadline, procs).await
}

/// Like [`wait_ready`], and the body must also contain `needle` (a peer router that answers its health check
/// before it has registered its workers is not ready).
pub(crate) async fn wait_ready_with(
    url: &str,
    needle: Option<&str>,
    deadline: Duration,
    procs: &mut [&mut Proc],
) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    let client = crate::load::http_client();
    let until = tokio::time::Instant::now() + deadline;
    loop {
        for proc in procs.iter_mut() {
            proc.check_alive()?;
        }
        if let Ok(request) = http::Request::get(url).body(http_body_util::Full::new(bytes::Bytes::new()))
            && let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(1), client.request(request)).await
            && response.status().is_success()
        {
            let Some(needle) = needle else {
                return Ok(());
            };
            if let Ok(Ok(body)) = tokio::time::timeout(Duration::from_secs(1), response.into_body().collect()).await
                && String::from_utf8_lossy(&body.to_bytes()).contains(needle)
            {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > until {
            bail!("{url} did not become ready within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
