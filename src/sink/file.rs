//! The file sink: a consumer never sees a partial, empty or missing file, nor a wider mode.
//!
//! Each write creates a temp file in the target's directory (so the rename cannot cross file
//! systems) with the final mode from the first instant, writes it, fsyncs it, renames it over the
//! target, and fsyncs the directory so the rename survives a power cut. A reader opening the path
//! gets either the old file or the new one, whole. A crash between create and rename leaves a temp
//! file named `.<file>.tmp-<pid>-<nonce>-<n>`; those whose writer is gone are removed at start-up
//! and on reload.
//!
//! "Gone" is decided by a lock, not by the pid: the writer holds an exclusive `flock` on its temp
//! file until the rename is done, and the kernel drops it when the writer dies. A pid would lie in
//! a container, where every restart is PID 1 again. The `nonce` (random per process) keeps names
//! unique across such restarts, and lets the clean-up skip this process's own writes in flight
//! without asking the lock.
//!
//! A symlink at the target path is replaced, not followed: the token never lands somewhere the
//! path did not say.

use secrecy::ExposeSecret;
use std::collections::{HashMap, HashSet};
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{FileFormat, FileSinkConfig};
use crate::safe_read::{self, Symlinks};

use super::{MAX_DOCUMENT_BYTES, Owner, Rendered};

/// Makes temp names unique within the process; the pid and [`process_nonce`] make them unique
/// across processes and across restarts that reuse a pid.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Bytes a temp name adds to the token file's name: `.` + `.tmp-` + pid (≤ 10 digits) + `-` +
/// nonce (16) + `-` + counter (≤ 20 digits). Config validation keeps names short enough for it.
pub(crate) const TEMP_NAME_OVERHEAD: usize = 1 + 5 + 10 + 1 + 16 + 1 + 20;

// A name that passes config validation always fits, with its temp suffix, in NAME_MAX (255).
const _: () = assert!(crate::config::MAX_FILE_NAME_BYTES + TEMP_NAME_OVERHEAD <= 255);

/// 16 hex digits, random once per process.
fn process_nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| format!("{:016x}", fastrand::u64(..)))
}

/// Writes one token to one path.
#[derive(Clone, Debug)]
pub(crate) struct FileSink {
    /// Target path, format and mode.
    config: FileSinkConfig,
}

/// What went wrong writing the file; names the path and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {step}: {source}")]
pub struct FileSinkError {
    /// The target file.
    pub path: PathBuf,
    /// Which step failed (create directory, create temp file, write, fsync, rename).
    pub step: &'static str,
    /// The OS error (ENOSPC, EACCES, EROFS…).
    pub source: io::Error,
}

impl FileSink {
    /// A sink for one configured path.
    pub fn new(config: FileSinkConfig) -> Self {
        FileSink { config }
    }

    /// Writes a rendered token.
    ///
    /// # Errors
    /// Any step of the atomic write failed; the previous file is untouched.
    pub async fn write(&self, document: &Rendered<'_>) -> Result<(), FileSinkError> {
        let contents = document.contents.clone();
        let path = self.config.path.clone();
        let mode = self.config.mode;
        let target = path.clone();
        tokio::task::spawn_blocking(move || {
            write_atomic(&target, contents.expose_secret().as_bytes(), mode)
        })
        .await
        .unwrap_or_else(|join| {
            Err(FileSinkError {
                path,
                step: "write task",
                source: io::Error::other(join.to_string()),
            })
        })
    }

    /// The file's bytes, when it is a json file that exists and can be read (at most
    /// [`MAX_DOCUMENT_BYTES`], a regular file, no symlink followed).
    pub async fn read_json(&self, owner: Owner<'_>) -> Option<Vec<u8>> {
        if self.config.format != FileFormat::Json {
            return None;
        }
        let read = safe_read::read(&self.config.path, MAX_DOCUMENT_BYTES, Symlinks::Refuse).await;
        match read {
            Ok(bytes) => Some(bytes),
            Err(err) if err.is_not_found() => None,
            Err(err) => {
                tracing::warn!(tenant = %owner.tenant, embed = owner.embed, error = %err, "not reusing the existing token file");
                None
            }
        }
    }
}

fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    format!(".{name}.tmp-")
}

/// Creates a temp file with `mode`, writes, fsyncs, renames over `path`, fsyncs the directory.
///
/// # Errors
/// The failing step and OS error; the temp file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileSinkError> {
    let fail = |step: &'static str| {
        move |source: io::Error| FileSinkError {
            path: path.to_owned(),
            step,
            source,
        }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(fail("create directory"))?;
    let temp = dir.join(format!(
        "{}{}-{}-{}",
        temp_prefix(path),
        std::process::id(),
        process_nonce(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(fail("create temp file"))?;
        // Held until the file is closed after the rename; the kernel releases it if we die, which
        // is how the clean-up tells a crash leftover from a write in flight.
        file.lock().map_err(fail("lock temp file"))?;
        // The umask may have narrowed the mode; set it exactly (never wider than configured).
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(fail("set mode"))?;
        file.write_all(contents).map_err(fail("write"))?;
        file.sync_all().map_err(fail("fsync"))?;
        std::fs::rename(&temp, path).map_err(fail("rename"))?;
        drop(file);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
        return result;
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("fsync directory"))
}

/// Removes temp files interrupted writes left next to any of `paths`; returns how many.
pub fn remove_stale_temps(paths: &[PathBuf]) -> usize {
    scan(paths).removed
}

/// What one look at the token directories found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Temp files of interrupted writes removed.
    pub removed: usize,
    /// The configured files that may exist: those the listing showed, and every file of a
    /// directory that could not be listed for another reason than not existing. A path not in
    /// it was not there when its directory was read.
    pub present: HashSet<PathBuf>,
}

/// Reads each directory of `paths` once: removes the temp files interrupted writes left there
/// and notes which of `paths` exist, so start-up neither asks the file system about each of ten
/// thousand absent files nor hands a read of each to the blocking pool.
///
/// Only names this writer produces match (`.<configured file>.tmp-<digits>-<16 hex>-<digits>`),
/// and a configured file itself is never touched. A temp file whose lock is held is a write in
/// flight (of this process during a reload, or of `once` next to a running daemon) and is kept.
pub(crate) fn scan(paths: &[PathBuf]) -> Scan {
    let mut directories: HashMap<&Path, Vec<&Path>> = HashMap::new();
    for path in paths {
        let dir = path.parent().unwrap_or(Path::new("."));
        directories.entry(dir).or_default().push(path);
    }
    let mut scan = Scan::default();
    for (dir, files) in directories {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            // Not there yet: neither are its files.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => {
                scan.present
                    .extend(files.iter().map(|file| file.to_path_buf()));
                continue;
            }
        };
        let targets: HashSet<&std::ffi::OsStr> =
            files.iter().filter_map(|file| file.file_name()).collect();
        let mut prefixes: Option<HashSet<String>> = None;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if targets.contains(name.as_os_str()) {
                scan.present.insert(entry.path());
                continue;
            }
            let text = name.to_string_lossy();
            if !text.starts_with('.') || !text.contains(".tmp-") {
                continue;
            }
            // Built at the first candidate only: a directory without leftovers (the usual
            // case) costs no string per configured file.
            let prefixes = prefixes
                .get_or_insert_with(|| files.iter().map(|file| temp_prefix(file)).collect());
            let path = entry.path();
            if is_our_temp(&text, prefixes)
                && writer_gone(&path)
                && std::fs::remove_file(&path).is_ok()
            {
                scan.removed += 1;
            }
        }
    }
    scan
}

/// `.<file>.tmp-<pid>-<nonce>-<n>` for one of `prefixes` (each `.<file>.tmp-`), exactly as
/// [`write_atomic`] names them.
fn is_our_temp(name: &str, prefixes: &HashSet<String>) -> bool {
    let Some(at) = name.rfind(".tmp-").map(|at| at + ".tmp-".len()) else {
        return false;
    };
    if !prefixes.contains(&name[..at]) {
        return false;
    }
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = name[at..].split('-').collect();
    matches!(parts.as_slice(), [pid, nonce, counter]
        if digits(pid)
            && nonce.len() == 16
            && nonce.bytes().all(|b| b.is_ascii_hexdigit())
            && digits(counter))
}

/// Whether a temp file's writer has gone: nobody holds its lock. This process's own temp files
/// (its nonce) are writes in flight by definition.
fn writer_gone(path: &Path) -> bool {
    let ours = path
        .file_name()
        .is_some_and(|name| name.to_string_lossy().contains(process_nonce()));
    if ours {
        return false;
    }
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    // Taking the lock proves no writer holds it; it is released when `file` closes.
    file.try_lock().is_ok()
}

/// Narrows an existing token file whose mode is wider than configured (left by an older version,
/// or changed by hand), so it does not stay readable by others until the next refresh. A symlink
/// or anything else that is not a regular file is left alone: the next write replaces it.
pub(crate) fn tighten_mode(path: &Path, mode: u32) -> io::Result<bool> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_file() => metadata,
        Ok(_) => return Ok(false),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    if metadata.permissions().mode() & 0o777 & !mode == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, Permissions::from_mode(mode & 0o777))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn mode_is_exact_and_parents_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/token.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(dir.path().join("a/b")).unwrap().mode() & 0o777,
            0o700
        );
        // An outside chmod does not survive the next write.
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"two", 0o640).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
    }

    #[test]
    fn stale_temps_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        // A crash leftover: nobody holds its lock, whatever its pid says (as PID 1 in a container
        // every incarnation has the same pid as its predecessor).
        let crashed = dir.path().join(".t.json.tmp-1-00000000deadbeef-4");
        std::fs::write(&crashed, "x").unwrap();
        let same_pid = dir.path().join(format!(
            ".t.json.tmp-{}-0123456789abcdef-4",
            std::process::id()
        ));
        std::fs::write(&same_pid, "x").unwrap();
        // A write in flight of this very process is left alone.
        let in_flight = dir.path().join(format!(
            ".t.json.tmp-{}-{}-9",
            std::process::id(),
            process_nonce()
        ));
        std::fs::write(&in_flight, "x").unwrap();
        // A write in flight of another process holds its lock.
        let locked = dir.path().join(".t.json.tmp-2-fedcba9876543210-1");
        std::fs::write(&locked, "x").unwrap();
        let holder = File::open(&locked).unwrap();
        holder.lock().unwrap();
        // Names the writer does not produce, and other files' temps, are never touched.
        let lookalikes = [
            ".other.json.tmp-1-00000000deadbeef-1",
            ".t.json.tmp-1-1",
            ".t.json.tmp-x",
        ];
        for name in lookalikes {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        std::fs::write(&path, "keep").unwrap();
        assert_eq!(remove_stale_temps(std::slice::from_ref(&path)), 2);
        assert!(!crashed.exists() && !same_pid.exists());
        assert!(in_flight.exists() && locked.exists());
        for name in lookalikes {
            assert!(dir.path().join(name).exists(), "{name}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
        drop(holder);
        assert_eq!(remove_stale_temps(std::slice::from_ref(&path)), 1);
    }

    #[test]
    fn the_scan_says_which_configured_files_exist() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("there.json");
        let absent = dir.path().join("absent.json");
        let unborn = dir.path().join("not-yet").join("t.json");
        std::fs::write(&there, "{}").unwrap();
        // A leftover of the absent file's interrupted write is not the file.
        let leftover = dir.path().join(".absent.json.tmp-1-00000000deadbeef-4");
        std::fs::write(&leftover, "x").unwrap();
        std::fs::write(dir.path().join("unrelated.json"), "{}").unwrap();
        let scan = scan(&[there.clone(), absent, unborn]);
        assert_eq!(scan.removed, 1);
        assert!(!leftover.exists());
        assert_eq!(scan.present, HashSet::from([there]));
    }

    #[test]
    fn hardening_10_a_tenant_file_named_like_a_temp_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("t.json");
        let lookalike = dir.path().join(".t.json.tmp-1-00000000deadbeef-4");
        std::fs::write(&main, "a").unwrap();
        std::fs::write(&lookalike, "b").unwrap();
        assert_eq!(remove_stale_temps(&[main, lookalike.clone()]), 0);
        assert!(lookalike.exists());
    }

    #[test]
    fn hardening_10_wider_modes_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        assert!(tighten_mode(&path, 0o600).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(!tighten_mode(&path, 0o640).unwrap(), "0600 is within 0640");
        assert!(!tighten_mode(&dir.path().join("none"), 0o600).unwrap());
    }

    #[test]
    fn failure_leaves_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        write_atomic(&path, b"old", 0o600).unwrap();
        // A directory where the file should be: rename fails.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), "x").unwrap();
        let err = write_atomic(&blocked, b"new", 0o600).unwrap_err();
        assert_eq!(err.step, "rename");
        assert_eq!(remove_stale_temps(&[blocked]), 0);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched").unwrap();
        let path = dir.path().join("t.json");
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        write_atomic(&path, b"token", 0o600).unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"untouched");
        assert!(
            !std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
