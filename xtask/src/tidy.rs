//! Tidy: textual rules over the whole tree, run first by `cargo xtask ci` and as plain `#[test]`s (so `cargo test`
//! alone enforces them too): every Rust file starts with a `//!` line saying what it is (ARCHITECTURE.md's code map
//! relies on it), no `todo`, `unimplemented` or `dbg` macro call is left in, test code does not sleep (a test
//! waits for an event — a watch channel, a join, a readiness signal — or runs on tokio's paused clock, so it is fast
//! and deterministic by construction), and the layering invariants of ARCHITECTURE.md hold: which package may
//! depend on what, a scheduler that never reads the clock or a global RNG, SQL only in `dashboard::db`, adapters
//! that neither read the datastore nor edit a record.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// Macros that mark unfinished or debugging code. Spelled in pieces so this file does not trip its own rule.
const FORBIDDEN: [&str; 3] = [
    concat!("todo", "!("),
    concat!("unimplemented", "!("),
    concat!("dbg", "!("),
];

/// A sleep, as test code must not call it. Spelled in pieces so this file does not trip its own rule.
const SLEEP: &str = concat!("sleep", "(");

/// Marks a line whose sleep *is* the behaviour under test (simulated work on a paused clock, a thread hogged on
/// purpose), not a wait for something to happen. The reason follows the marker on the same line.
const SLEEP_MARKER: &str = "tidy: sleep is the test";

/// Test files still allowed to sleep-poll, with the reason beside them, until they get an explicit wait. Temporary:
/// shrink it; tidy fails when a listed file no longer sleeps, so an entry cannot outlive its reason.
const SLEEP_POLLING_ALLOWED: [&str; 2] = [
    // Its tests wait on the shipper's shipped and dropped counters, which have no change signal yet.
    "crates/gateway/src/shipper.rs",
    // Polls the browser's DOM over WebDriver and the dashboard's HTTP API, neither of which pushes an event.
    "crates/dashboard/tests/browser.rs",
];

/// Runs every rule; the error lists each offending file.
pub(crate) fn check(root: &Path) -> anyhow::Result<()> {
    let files = rust_files(root)?;
    let mut problems = layering(root, &files)?;
    for path in &files {
        let text = std::fs::read_to_string(path)?;
        let shown = path.strip_prefix(root).unwrap_or(path).display().to_string();
        if !text.starts_with("//!") {
            problems.push(format!("{shown}: does not start with a `//!` line saying what it is"));
        }
        for (i, line) in text.lines().enumerate() {
            if let Some(mac) = FORBIDDEN.iter().find(|m| line.contains(*m)) {
                problems.push(format!("{shown}:{}: `{mac}…)` left in", i + 1));
            }
        }
        let sleeps = test_sleeps(Path::new(&shown), &text);
        let allowed = SLEEP_POLLING_ALLOWED
            .iter()
            .any(|file| Path::new(file) == Path::new(&shown));
        match (allowed, sleeps.is_empty()) {
            (false, false) => {
                problems.extend(sleeps.iter().map(|line| {
                    format!("{shown}:{line}: a test sleeps; wait for an event or use tokio's paused clock")
                }))
            }
            (true, true) => problems.push(format!(
                "{shown}: no longer sleeps in tests; remove it from SLEEP_POLLING_ALLOWED"
            )),
            _ => {}
        }
    }
    if !problems.is_empty() {
        bail!("tidy:\n  {}", problems.join("\n  "));
    }
    eprintln!(
        "tidy: every Rust file has a //! header; no todo!, unimplemented! or dbg!; tests do not sleep; the layers \
         hold (dependencies, a pure scheduler, SQL only in dashboard::db, thin adapters)"
    );
    Ok(())
}

/// The 1-based lines of `text` where test code sleeps. Comments and lines marked [`SLEEP_MARKER`] do not count.
fn test_sleeps(path: &Path, text: &str) -> Vec<usize> {
    code_lines(path, text)
        .filter(|&(_, line, test)| test && line.contains(SLEEP) && !line.contains(SLEEP_MARKER))
        .map(|(number, _, _)| number)
        .collect()
}

/// Every non-comment line of `text` with its 1-based number and whether it is test code: anywhere in a test file
/// (under a `tests/` folder, or named `tests.rs`), else inside an item under `#[cfg(test)]` (so an out-of-line
/// test module is seen only when its file is `tests.rs`).
fn code_lines<'a>(path: &Path, text: &'a str) -> impl Iterator<Item = (usize, &'a str, bool)> {
    let test_file =
        path.file_name().is_some_and(|n| n == "tests.rs") || path.components().any(|c| c.as_os_str() == "tests");
    // Brace depth of the `#[cfg(test)]` item being read, once its body opened; `Some(0)` before it opens.
    let mut in_test: Option<usize> = None;
    text.lines().enumerate().filter_map(move |(i, line)| {
        let code = line.trim_start();
        if code.starts_with("//") {
            return None;
        }
        if in_test.is_none() && code.starts_with("#[cfg(test)]") {
            in_test = Some(0);
        }
        let test = test_file || in_test.is_some();
        if let Some(depth) = in_test {
            // Counting braces ignores strings; test code's braces in strings are balanced on their line.
            let opened = line.matches('{').count();
            let closed = line.matches('}').count();
            let next = (depth + opened).saturating_sub(closed);
            let ended = if depth == 0 && opened == 0 {
                // `#[cfg(test)] mod tests;` and other items without a body end at their `;`.
                code.ends_with(';')
            } else {
                next == 0
            };
            in_test = (!ended).then_some(next);
        }
        Some((i + 1, line, test))
    })
}

/// Dependencies a package must not have, by layer (ARCHITECTURE.md's invariants): the pure core and the shared
/// vocabulary touch no network, the API types no client, and the dashboard reads decisions as `audit` records.
const FORBIDDEN_DEPENDENCIES: [(&str, &[&str]); 4] = [
    (
        "crates/scheduler/Cargo.toml",
        &[
            "kube",
            "tonic",
            "sqlx",
            "hyper",
            "hyper-util",
            "axum",
            "zeromq",
            "tokio",
        ],
    ),
    (
        "crates/audit/Cargo.toml",
        &[
            "kube",
            "tonic",
            "sqlx",
            "hyper",
            "axum",
            "zeromq",
            "tokio",
            "api",
            "scheduler",
        ],
    ),
    (
        "crates/api/Cargo.toml",
        &["tonic", "sqlx", "hyper", "hyper-util", "axum", "zeromq", "tokio"],
    ),
    ("crates/dashboard/Cargo.toml", &["scheduler", "gateway"]),
];

/// Calls the pure scheduler must not make outside its tests: it is handed `now` and an RNG.
const IMPURE: [&str; 4] = ["Instant::now()", "SystemTime::now()", "rand::rng()", "thread_rng"];

/// What marks SQL in a string: only `dashboard::db` may hold it.
const SQL: [&str; 5] = [
    concat!("\"SEL", "ECT "),
    concat!("INSERT", " INTO"),
    concat!("DELETE", " FROM"),
    concat!("CREATE", " TABLE"),
    concat!("\"UPD", "ATE "),
];

/// What an adapter must not do: read the datastore to decide, or edit a record's reason.
const ADAPTER_FORBIDDEN: [&str; 2] = ["datastore.", ".reason"];

/// The layering rules: manifests (dependencies by layer) and sources (a pure scheduler, SQL only in the
/// dashboard's `db`, thin adapters).
fn layering(root: &Path, files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for (manifest, forbidden) in FORBIDDEN_DEPENDENCIES {
        // A tree without the package (tidy's own tests) has nothing to check.
        let Ok(text) = std::fs::read_to_string(root.join(manifest)) else {
            continue;
        };
        for dependency in dependencies(&text) {
            if forbidden.contains(&dependency.as_str()) {
                problems.push(format!(
                    "{manifest}: depends on `{dependency}`, which its layer must not"
                ));
            }
        }
    }
    for path in files {
        let shown = path.strip_prefix(root).unwrap_or(path);
        let shown_str = shown.display().to_string();
        let text = std::fs::read_to_string(path)?;
        let scheduler = shown.starts_with("crates/scheduler/src");
        let db = shown.starts_with("crates/dashboard/src/db");
        let adapter =
            shown.starts_with("crates/gateway/src/ext_proc") || shown == Path::new("crates/gateway/src/proxy.rs");
        for (number, line, test) in code_lines(shown, &text) {
            if test {
                continue;
            }
            if scheduler && let Some(call) = IMPURE.iter().find(|c| line.contains(*c)) {
                problems.push(format!(
                    "{shown_str}:{number}: the scheduler calls `{call}`; take it as an argument"
                ));
            }
            if !db && let Some(sql) = SQL.iter().find(|s| line.contains(*s)) {
                problems.push(format!("{shown_str}:{number}: SQL (`{sql}`) outside dashboard::db"));
            }
            if adapter && let Some(word) = ADAPTER_FORBIDDEN.iter().find(|w| line.contains(*w)) {
                problems.push(format!(
                    "{shown_str}:{number}: an adapter touches `{word}`; ask the Director or report through the Flight"
                ));
            }
        }
    }
    Ok(problems)
}

/// The package names under `[dependencies]` of a Cargo manifest (not dev- or build-dependencies).
fn dependencies(manifest: &str) -> Vec<String> {
    let mut in_section = false;
    let mut names = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[dependencies]";
            continue;
        }
        if in_section && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.', ' ']).next().unwrap_or("").trim();
            names.push(name.to_owned());
        }
    }
    names
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
        std::fs::write(
            dir.join("sql.rs"),
            format!("//! Sql.\nconst Q: &str = {}x\";\n", SQL[0]),
        )
        .unwrap();
        for (file, text) in [
            (
                "crates/scheduler/src/pick.rs",
                "//! Pick.\nfn f() { let _ = std::time::Instant::now(); }\n#[cfg(test)]\nmod tests { fn t() { std::time::Instant::now(); } }\n",
            ),
            (
                "crates/gateway/src/proxy.rs",
                "//! Proxy.\nfn f(r: &mut R) { r.reason.push('x'); }\n",
            ),
            (
                "crates/scheduler/Cargo.toml",
                "[dependencies]\nrand.workspace = true\ntokio = \"1\"\n\n[dev-dependencies]\nkube = \"1\"\n",
            ),
        ] {
            std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
            std::fs::write(dir.join(file), text).unwrap();
        }
        let err = check(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("bare.rs: does not start with a `//!` line"), "{err}");
        assert!(err.contains("sql.rs:2: SQL"), "{err}");
        assert!(
            err.contains("crates/scheduler/src/pick.rs:2: the scheduler calls `Instant::now()`"),
            "{err}"
        );
        assert!(
            err.contains("crates/gateway/src/proxy.rs:2: an adapter touches `.reason`"),
            "{err}"
        );
        assert!(err.contains("crates/scheduler/Cargo.toml: depends on `tokio`"), "{err}");
        assert!(err.contains("wip.rs:2:"), "{err}");
        assert!(!err.contains("ignored.rs"), "{err}");
        // Test code may read the clock; dev-dependencies may be anything.
        assert!(!err.contains("pick.rs:4"), "{err}");
        assert!(!err.contains("`kube`"), "{err}");
    }

    #[test]
    fn tests_may_not_sleep_but_production_code_may() {
        let wait = format!("tokio::time::{SLEEP}Duration::from_millis(5)).await;");
        let check = |path: &str, text: &str| test_sleeps(Path::new(path), &text.replace("WAIT", &wait));
        assert_eq!(
            check("crates/x/tests/it.rs", "//! It.\nasync fn f() {\n    WAIT\n}\n"),
            [3]
        );
        assert_eq!(check("crates/x/src/tests.rs", "//! T.\nWAIT\n"), [2]);
        // Production code may sleep (backoff, pacing); a test module in the same file may not.
        let mixed = "//! M.\nasync fn backoff() { WAIT }\n#[cfg(test)]\nmod tests {\n    fn f() {\n        WAIT\n    }\n}\nfn after() { WAIT }\n";
        assert_eq!(check("crates/x/src/lib.rs", mixed), [6]);
        let out_of_line = "//! M.\n#[cfg(test)]\nmod tests;\nfn pacing() { WAIT }\n";
        assert_eq!(check("crates/x/src/lib.rs", out_of_line), Vec::<usize>::new());
        let marked = format!("//! M.\nWAIT // {SLEEP_MARKER}: simulated work\n// WAIT\n");
        assert_eq!(check("crates/x/tests/it.rs", &marked), Vec::<usize>::new());
    }

    #[test]
    fn the_sleep_allow_list_names_existing_files() {
        let root = crate::procs::workspace_root();
        for file in SLEEP_POLLING_ALLOWED {
            assert!(
                root.join(file).is_file(),
                "{file} is in SLEEP_POLLING_ALLOWED but does not exist"
            );
        }
    }
}
