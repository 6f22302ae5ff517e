//! One genoci at a time per layout and store.
//!
//! API: `pub struct Lock` (released on drop), `pub fn lock(dir: &Path) -> Result<Lock>`: an exclusive
//! non-blocking `flock` on the directory itself; if held, `LayoutError::Locked` naming the directory.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{LayoutError, Result};

/// An exclusive hold on a directory, released when dropped (or when the
/// process dies, which is why it is a `flock` and not a lock file).
#[derive(Debug)]
pub struct Lock {
    _held: Flock<File>,
    dir: PathBuf,
}

impl Lock {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Take the lock on `dir`, or fail at once if another process holds it.
pub fn lock(dir: &Path) -> Result<Lock> {
    let file = File::open(dir).map_err(LayoutError::io("open", dir))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => {
            tracing::debug!(dir = %dir.display(), "locked");
            Ok(Lock {
                _held: held,
                dir: dir.to_path_buf(),
            })
        }
        Err((_, Errno::EWOULDBLOCK)) => Err(LayoutError::Locked(format!(
            "another genoci is using {}",
            dir.display()
        ))),
        Err((_, errno)) => Err(LayoutError::io("lock", dir)(errno.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_until_the_first_is_dropped() {
        let t = tempfile::tempdir().unwrap();
        let first = lock(t.path()).unwrap();
        assert_eq!(first.dir(), t.path());
        match lock(t.path()) {
            Err(LayoutError::Locked(msg)) => assert!(msg.contains("another genoci")),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        lock(t.path()).unwrap();
    }
}
