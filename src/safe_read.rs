//! Reading a file that someone else controls: a secret, a certificate, a projected token, an
//! existing token file, the config. Any of them may be a FIFO, a device such as `/dev/zero`, a
//! gigabyte by mistake, or on a hung network mount, and none of that may stall the runtime or
//! exhaust memory. So every read here:
//!
//! * opens with `O_NONBLOCK` (opening a FIFO does not wait for a writer) and, where the caller
//!   says the path must not be a symlink, `O_NOFOLLOW`;
//! * refuses anything but a regular file (checked on the open descriptor, so no race);
//! * reads at most `max` bytes and fails beyond;
//! * in its async form, runs on the blocking pool with a deadline, so a hung mount costs one
//!   blocking thread and one failed read, never an async worker.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long an async read may take before it is given up (the blocking thread may stay stuck
/// on a hung mount; the caller does not).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a symlink at the path itself is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symlinks {
    /// Follow: Kubernetes Secret and ConfigMap volumes are symlinks into `..data/`.
    Follow,
    /// Refuse: our own token files are never symlinks; one is someone else's doing.
    Refuse,
}

/// Why a file could not be read. Names the path and what was wrong, never the content.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Open or read failed (missing, permission, `ELOOP` for a refused symlink…).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A FIFO, socket, device or directory where a regular file belongs.
    #[error("{path} is not a regular file")]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// Larger than any legitimate file of its kind.
    #[error("{path} is larger than {max} bytes; is the path right?")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        max: u64,
    },
    /// The read did not finish within [`READ_TIMEOUT`] (a hung mount).
    #[error("reading {path} did not finish within {seconds} s")]
    TimedOut {
        /// The file.
        path: PathBuf,
        /// The deadline.
        seconds: u64,
    },
}

impl ReadError {
    /// Whether the file does not exist (callers often treat that as "nothing there yet").
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Reads a regular file of at most `max` bytes, blocking the calling thread.
///
/// # Errors
/// See [`ReadError`].
pub fn read_blocking(path: &Path, max: u64, symlinks: Symlinks) -> Result<Vec<u8>, ReadError> {
    let io_error = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let mut flags = libc::O_NONBLOCK;
    if symlinks == Symlinks::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    if !metadata.file_type().is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_owned(),
        });
    }
    if metadata.len() > max {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    // The size may change after the check (a file being rewritten in place): read one byte
    // more than allowed to notice.
    let mut contents = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut contents)
        .map_err(io_error)?;
    if contents.len() as u64 > max {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(contents)
}

/// [`read_blocking`] on the blocking pool, given up after [`READ_TIMEOUT`].
///
/// # Errors
/// See [`ReadError`].
pub async fn read(path: &Path, max: u64, symlinks: Symlinks) -> Result<Vec<u8>, ReadError> {
    let owned = path.to_owned();
    blocking(path, move || read_blocking(&owned, max, symlinks)).await?
}

/// Any blocking file work about `path` (a stat, a parse of files read with [`read_blocking`])
/// on the blocking pool, given up after [`READ_TIMEOUT`].
///
/// # Errors
/// The work did not finish in time, or panicked.
pub async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReadError> {
    let task = tokio::task::spawn_blocking(work);
    match tokio::time::timeout(READ_TIMEOUT, task).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(join)) => Err(ReadError::Io {
            path: path.to_owned(),
            source: io::Error::other(join.to_string()),
        }),
        Err(_) => Err(ReadError::TimedOut {
            path: path.to_owned(),
            seconds: READ_TIMEOUT.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_within_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_blocking(&path, 5, Symlinks::Refuse).unwrap(), b"12345");
        assert!(matches!(
            read_blocking(&path, 4, Symlinks::Refuse),
            Err(ReadError::TooLarge { max: 4, .. })
        ));
        let missing = read_blocking(&dir.path().join("none"), 5, Symlinks::Follow).unwrap_err();
        assert!(missing.is_not_found());
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        for path in [Path::new("/dev/zero"), dir.path()] {
            assert!(
                matches!(
                    read_blocking(path, 1024, Symlinks::Follow),
                    Err(ReadError::NotRegular { .. })
                ),
                "{}",
                path.display()
            );
        }
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // No writer ever opens it: a blocking open would hang this test.
        assert!(matches!(
            read_blocking(&fifo, 1024, Symlinks::Follow),
            Err(ReadError::NotRegular { .. })
        ));
    }

    #[test]
    fn symlinks_are_followed_only_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read_blocking(&link, 5, Symlinks::Follow).unwrap(), b"x");
        assert!(matches!(
            read_blocking(&link, 5, Symlinks::Refuse),
            Err(ReadError::Io { .. })
        ));
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_blocking(&zero, 5, Symlinks::Follow).is_err());
    }

    #[tokio::test]
    async fn the_async_form_reads_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(read(&path, 5, Symlinks::Refuse).await.unwrap(), b"abc");
    }
}
