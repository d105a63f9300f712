//! Room on the disk of a SQLite database, for readiness. A write that only rewrites pages the
//! database or its WAL already hold succeeds on a full disk, so the write probe alone would say
//! ready while every write that needs a new page fails; this probe allocates real blocks beside
//! the database file (then frees them). Never touches the database itself.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Free room a ready SQLite database must have: a burst of writes and a checkpoint fit in it.
pub const PROBE_BYTES: usize = 1 << 20;

/// `Ok` when `PROBE_BYTES` can be allocated on the disk of the database at `db_path`.
pub fn check(db_path: &Path) -> io::Result<()> {
    let probe = probe_path(db_path);
    let allocated = allocate(&probe);
    // Freed whatever happened; a leftover file is harmless, and the next probe truncates it.
    let _ = std::fs::remove_file(&probe);
    allocated
}

fn probe_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "lorewire.db".into());
    name.push("-space-probe");
    db_path.with_file_name(name)
}

fn allocate(path: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    // SAFETY: the descriptor is open for writing for the duration of the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, PROBE_BYTES as libc::off_t) };
    match rc {
        0 => Ok(()),
        // A filesystem without fallocate: write the bytes instead.
        libc::EOPNOTSUPP | libc::EINVAL => {
            let zeros = vec![0u8; 64 * 1024];
            for _ in 0..PROBE_BYTES / zeros.len() {
                file.write_all(&zeros)?;
            }
            file.sync_data()
        }
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_beside_the_database_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("game.db");
        check(&db).unwrap();
        assert_eq!(probe_path(&db), dir.path().join("game.db-space-probe"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = dir.path().join("gone").join("game.db");
        assert!(check(&missing).is_err());
    }
}
