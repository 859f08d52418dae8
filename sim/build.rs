//! Tells the simulator's tests whether the `openssl` command is here (`has_openssl`), as the
//! daemon's build script does for its tests: a test that needs it is ignored with "skipped:
//! needs openssl" on a machine without it, and runs (and fails when it is missing) with `CI=true`.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rustc-check-cfg=cfg(has_openssl)");
    let ci = std::env::var("CI").is_ok_and(|value| value == "true");
    let dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    for dir in dirs.iter().filter(|dir| dir.is_dir()) {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    if ci || dirs.iter().any(|dir| dir.join("openssl").is_file()) {
        println!("cargo::rustc-cfg=has_openssl");
    }
}
