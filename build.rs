//! Finds the external programs some tests run (redis-server, prometheus, openssl, node, …) and
//! tells the compiler which are here, as `has_<program>` cfgs. A test that needs a missing
//! program is then marked ignored with the reason "skipped: needs <program>", so plain
//! `cargo test` runs every test this machine can run and names each one it cannot, instead of
//! counting it as passed or hiding every such test behind `--include-ignored`.
//!
//! With `CI=true` every program counts as present: a test whose program is missing runs and
//! fails, so CI can never pass by skipping.
//!
//! The library and binary do not use these cfgs; only tests do.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs tests look for, and the cfg each sets.
const PROGRAMS: &[(&str, &str)] = &[
    ("redis-server", "has_redis_server"),
    ("redis-cli", "has_redis_cli"),
    ("prometheus", "has_prometheus"),
    ("promtool", "has_promtool"),
    ("openssl", "has_openssl"),
    ("systemd-analyze", "has_systemd_analyze"),
    ("systemd-sysusers", "has_systemd_sysusers"),
    ("setpriv", "has_setpriv"),
    ("unshare", "has_unshare"),
    ("kubernetes-validate", "has_kubernetes_validate"),
    ("kubectl", "has_kubectl"),
    ("chromium", "has_chromium"),
    ("npm", "has_npm"),
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=CI");
    let ci = std::env::var("CI").is_ok_and(|value| value == "true");
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    // A program installed since the last build changes its directory: look again then.
    for dir in dirs.iter().filter(|dir| dir.is_dir()) {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    let found = |name: &str| dirs.iter().any(|dir| dir.join(name).is_file());
    let mut cfgs: Vec<&str> = PROGRAMS.iter().map(|(_, cfg)| *cfg).collect();
    cfgs.extend(["has_node", "has_root"]);
    for cfg in &cfgs {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    for (program, cfg) in PROGRAMS {
        if ci || found(program) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
    if ci || node_is_recent(&dirs) {
        println!("cargo::rustc-cfg=has_node");
    }
    if ci || is_root() {
        println!("cargo::rustc-cfg=has_root");
    }
}

/// Whether `node` is on PATH and at least 20.19, the oldest the OAuth2 mock server runs on.
fn node_is_recent(dirs: &[PathBuf]) -> bool {
    let Some(node) = dirs
        .iter()
        .map(|dir| dir.join("node"))
        .find(|p| p.is_file())
    else {
        return false;
    };
    version(&node).is_some_and(|(major, minor)| (major, minor) >= (20, 19))
}

/// `node --version` (`v22.3.0`) as (major, minor).
fn version(node: &Path) -> Option<(u32, u32)> {
    let out = Command::new(node).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut parts = text.trim().trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether the build runs as root (the install and user-switching tests need it).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}
