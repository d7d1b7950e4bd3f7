//! Helpers shared by the tests of several packages: the seed's InferencePool and InferenceModel, simulated pods
//! bound like a pool's pods, waiting on a change signal instead of sleeping, the check that every flag of a binary
//! also reads a `SWITCHYARD_…` environment variable, and the fake Kubernetes API server
//! ([`kube::ApiServerVerifier`]). A dev-dependency only.

pub mod kube;

use std::{net::Ipv4Addr, time::Duration};

use tokio::{net::TcpListener, sync::watch};

/// The seed article's InferencePool (`reasoning-pool`, port 8000, `app: qwq-32b`), exactly as `deploy/examples`
/// ships it: the tests parse the manifest users apply, not a copy that could drift from it.
pub const SEED_POOL: &str = include_str!("../../../deploy/examples/03-inferencepool.yaml");

/// The seed article's InferenceModel (`qwq`, Critical, all weight on `qwq-32b`), as `deploy/examples` ships it.
pub const SEED_MODEL: &str = include_str!("../../../deploy/examples/04-inferencemodel.yaml");

/// The interpreter of the Python test clients (`envoy-data-plane`, and `msgspec` + `pyzmq` for the KV events):
/// `$SWITCHYARD_PYTHON`, else the venv `cargo xtask ci` installs at `target/pyenv-extproc`. Panics with the command
/// that creates it when there is none: a test never passes by skipping.
pub fn python() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = std::env::var_os("SWITCHYARD_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target/pyenv-extproc/bin/python"));
    assert!(
        path.exists(),
        "the Python test clients need {}: `cargo xtask ci` creates it (or python3 -m venv target/pyenv-extproc && \
         target/pyenv-extproc/bin/pip install -r crates/test-support/python/requirements.txt)",
        path.display()
    );
    path
}

/// The folder of the shared Python test modules (`vllm_kv_events.py`): put it on `PYTHONPATH`.
pub fn python_modules() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Binds `n` listeners on 127.0.`block`.1, .2, … sharing one port, as the pods of a pool share its target port.
/// Retries with a fresh port when another test holds it on one of the addresses.
pub async fn bind_pods(block: u8, n: u8) -> (u16, Vec<TcpListener>) {
    for _attempt in 0..50 {
        let first = TcpListener::bind((Ipv4Addr::new(127, 0, block, 1), 0))
            .await
            .expect("binding a loopback port");
        let port = first.local_addr().expect("a bound listener has an address").port();
        let mut listeners = vec![first];
        for i in 2..=n {
            match TcpListener::bind((Ipv4Addr::new(127, 0, block, i), port)).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => break,
            }
        }
        if listeners.len() == usize::from(n) {
            return (port, listeners);
        }
    }
    panic!("could not bind {n} pods on one port in 127.0.{block}.0/24");
}

/// Waits until `ready()` holds, checking it again each time `signal` changes (never on a timer); panics naming
/// `what` after `within`. The signal is whatever the state `ready` reads announces its changes on.
pub async fn until<T>(signal: &mut watch::Receiver<T>, within: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let wait = async {
        loop {
            // Marks the current value seen before checking, so a change after the check wakes `changed`.
            signal.borrow_and_update();
            if ready() {
                return;
            }
            if signal.changed().await.is_err() {
                panic!("waiting for {what}: the signal's sender is gone");
            }
        }
    };
    if tokio::time::timeout(within, wait).await.is_err() {
        panic!("timed out after {within:?} waiting for {what}");
    }
}

/// Asserts that every flag of `command` (but `--help` and `--version`) has a `SWITCHYARD_…` environment variable.
pub fn assert_every_flag_has_an_env_var(command: &clap::Command) {
    for arg in command.get_arguments() {
        if matches!(arg.get_id().as_str(), "help" | "version") {
            continue;
        }
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        assert!(
            env.as_deref().is_some_and(|e| e.starts_with("SWITCHYARD_")),
            "flag --{} of {} has no SWITCHYARD_ env var",
            arg.get_id(),
            command.get_name()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pods_share_one_port_on_consecutive_addresses() {
        let (port, listeners) = bind_pods(97, 3).await;
        let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        assert_eq!(addrs.len(), 3);
        for (i, addr) in addrs.iter().enumerate() {
            assert_eq!(addr.port(), port);
            assert_eq!(addr.ip(), std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 97, i as u8 + 1)));
        }
    }

    #[test]
    #[should_panic(expected = "flag --plain of demo has no SWITCHYARD_ env var")]
    fn a_flag_without_an_env_var_is_named() {
        let command = clap::Command::new("demo")
            .arg(clap::Arg::new("good").long("good").env("SWITCHYARD_GOOD"))
            .arg(clap::Arg::new("plain").long("plain"));
        assert_every_flag_has_an_env_var(&command);
    }
}
