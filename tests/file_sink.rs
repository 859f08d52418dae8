//! The file sink's promise to consumers, tested with a real concurrent reader.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use powerbi_tokend::sink::file::{remove_stale_temps, write_atomic};

/// A reader polling the file while it is rewritten 1000 times never sees it missing, empty or
/// partial, and never with a mode other than 0600.
#[test]
fn reader_never_sees_a_torn_file_during_1000_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens/contoso.json");
    let body = |i: usize| {
        // Large enough (about 40 KiB) that a non-atomic write would be observable mid-way.
        format!(
            "{{\"generation\":{i},\"access_token\":\"{}\"}}",
            "x".repeat(40_000 + i)
        )
    };
    write_atomic(&path, body(0).as_bytes(), 0o600).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let path = path.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut generations = std::collections::BTreeSet::new();
            while !done.load(Ordering::Acquire) {
                let text = std::fs::read_to_string(&path).expect("the file is never missing");
                let meta = std::fs::metadata(&path).expect("the file is never missing");
                assert_eq!(meta.mode() & 0o777, 0o600, "mode changed");
                assert!(!text.is_empty(), "empty file seen");
                let value: serde_json::Value =
                    serde_json::from_str(&text).expect("a partial file was seen");
                let generation = value["generation"].as_u64().unwrap() as usize;
                let token = value["access_token"].as_str().unwrap();
                assert_eq!(
                    token.len(),
                    40_000 + generation,
                    "token does not match its generation"
                );
                generations.insert(generation);
                reads += 1;
            }
            (reads, generations.len())
        })
    };
    for i in 1..=1000 {
        write_atomic(&path, body(i).as_bytes(), 0o600).unwrap();
    }
    done.store(true, Ordering::Release);
    let (reads, distinct) = reader.join().unwrap();
    assert!(reads > 100, "reader only managed {reads} reads");
    assert!(distinct > 10, "reader saw only {distinct} generations");
    let last: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(last["generation"], 1000);
    // No temp file is left behind by successful writes.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(remove_stale_temps(&[path]), 0);
}

/// The temp file has the final mode from its creation: a watcher of the directory never sees a
/// wider file, whatever the umask.
#[test]
fn temp_file_is_never_wider_than_the_final_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let dir = dir.path().to_owned();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            while !done.load(Ordering::Acquire) {
                for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                    if let Ok(meta) = entry.metadata() {
                        assert_eq!(
                            meta.mode() & 0o077,
                            0,
                            "{:?} is group/other accessible",
                            entry.file_name()
                        );
                        seen += 1;
                    }
                }
            }
            seen
        })
    };
    for i in 0..300 {
        write_atomic(&path, format!("{i}").as_bytes(), 0o600).unwrap();
    }
    done.store(true, Ordering::Release);
    assert!(watcher.join().unwrap() > 0);
}
