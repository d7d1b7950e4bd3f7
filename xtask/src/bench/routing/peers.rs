//! Peer routers raced with `--peers`: pinned PyPI packages installed into venvs, and how to launch each.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::procs;

/// The peer router raced with `--peers`, pinned so reports stay comparable.
pub(super) const SMG_PACKAGE: &str = "smg==1.13.0";
pub(super) const VLLM_ROUTER_PACKAGE: &str = "vllm-router==0.1.17";

/// A peer router product: how to install and launch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PeerProduct {
    Smg,
    VllmRouter,
}

impl PeerProduct {
    pub(super) fn package(self) -> &'static str {
        match self {
            PeerProduct::Smg => SMG_PACKAGE,
            PeerProduct::VllmRouter => VLLM_ROUTER_PACKAGE,
        }
    }

    /// The launcher in the venv's bin/.
    pub(super) fn command(self) -> &'static str {
        match self {
            PeerProduct::Smg => "smg",
            PeerProduct::VllmRouter => "vllm-router",
        }
    }

    /// Arguments before the common `--host … --worker-urls …` ones.
    pub(super) fn subcommand(self) -> &'static [&'static str] {
        match self {
            PeerProduct::Smg => &["launch"],
            PeerProduct::VllmRouter => &[],
        }
    }

    /// The URL path that says the peer is ready, and what its body must contain with `pods` workers.
    pub(super) fn readiness(self, pods: u8) -> (&'static str, Option<String>) {
        match self {
            PeerProduct::Smg => ("/readiness", Some(format!("\"healthy_workers\":{pods}"))),
            // vllm-router waits for its workers' health before it listens at all.
            PeerProduct::VllmRouter => ("/health", None),
        }
    }

    pub(super) fn log_level(self) -> &'static str {
        match self {
            PeerProduct::Smg => "warn",
            PeerProduct::VllmRouter => "warning",
        }
    }
}
pub(super) const PEER_LISTEN: (&str, u16) = ("127.0.0.1", 18381);

/// Installs a pinned peer router into its own venv under target/bench (once) and returns its launcher; each
/// gets its own venv because their packages ship overlapping commands.
pub(super) fn install_peer(product: PeerProduct) -> anyhow::Result<PathBuf> {
    let venv = procs::workspace_root().join(format!("target/bench/peers-venv-{}", product.command()));
    let launcher = venv.join("bin").join(product.command());
    if !launcher.exists() {
        let venv_str = venv.display().to_string();
        procs::run("python3", &["-m", "venv", &venv_str])?;
        let pip = venv.join("bin/pip").display().to_string();
        procs::run(
            &pip,
            &["install", "--quiet", "--disable-pip-version-check", product.package()],
        )
        .with_context(|| format!("installing the peer router {} from PyPI", product.package()))?;
    }
    Ok(launcher)
}
