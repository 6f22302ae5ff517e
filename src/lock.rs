//! Locks that let several genoci processes share one layout and one store.
//!
//! Each lock is a `flock` on a directory, so it is released when its
//! process dies, however it dies. Two kinds are held for a whole command:
//! a shared hold by every command that reads or adds (builds, checkouts,
//! unpack), which never keeps another such command waiting, and an
//! exclusive one by what must be alone (gc, setup, unsetup), which waits
//! until every shared hold is gone and keeps new ones waiting meanwhile.
//! Short exclusive locks guard single read-modify-writes (the layout's
//! index).
//!
//! A plain `flock` lets shared holders that come after an exclusive taker
//! began to wait go ahead of it, so a gc could wait for ever behind builds
//! that overlap. [`acquire_fair`] puts a gate before the lock: an exclusive
//! taker holds the gate while it waits and works, and shared takers pass
//! the gate (holding it shared for an instant) before they take the lock,
//! so those that come after a waiting gc wait for it.
//!
//! A wait is said once, as cargo says "Blocking waiting for file lock",
//! naming what is waited on and why; with `--no-wait` the command fails at
//! once instead. A flock is also taken between threads of one process (each
//! [`acquire`] opens the directory anew), so the same lock serves both.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{what} is busy: {why}; not waiting, as --no-wait says")]
    Busy { what: String, why: String },
    #[error("lock {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted while waiting for {0}")]
    Interrupted(String),
}

pub type Result<T, E = LockError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Many holders at once; none while an exclusive one holds.
    Shared,
    /// One holder, and no shared one.
    Exclusive,
}

/// What to do when the lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Wait, saying so at once.
    Block,
    /// Wait, saying so only past this long: for locks held for an instant,
    /// whose waits are not worth a line unless a holder is stuck.
    Quietly(Duration),
    /// Fail at once with [`LockError::Busy`] (`--no-wait`).
    No,
}

/// What a lock is on, for the messages: `what` names it ("the store
/// /x/.genoci"), `why` says why this command would wait ("gc needs it to
/// itself and other genoci commands are using it").
#[derive(Debug, Clone)]
pub struct Subject {
    pub what: String,
    pub why: String,
}

/// A held lock, released when dropped.
#[derive(Debug)]
pub struct Lock {
    _held: Flock<File>,
    /// The gate an exclusive [`acquire_fair`] keeps closed.
    _gate: Option<Box<Lock>>,
    path: PathBuf,
    mode: Mode,
}

impl Lock {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
}

/// The longest sleep between two tries: how late a waiter notices that the
/// lock is free (or that Ctrl-C was pressed).
const MAX_POLL: Duration = Duration::from_millis(100);

/// Take `mode` on the directory (or file) `path`.
///
/// The wait polls instead of blocking in `flock`: genoci's signal handlers
/// restart system calls, so a blocked `flock` would not see Ctrl-C.
pub fn acquire(path: &Path, mode: Mode, wait: Wait, subject: &Subject) -> Result<Lock> {
    take(path, mode, wait, subject, &mut false)
}

/// [`acquire`] `path` behind the directory `gate` (see the module doc), for
/// holds where an exclusive taker must not be starved by shared ones. A
/// wait is said once, for the gate and the lock together.
pub fn acquire_fair(
    path: &Path,
    gate: &Path,
    mode: Mode,
    wait: Wait,
    subject: &Subject,
) -> Result<Lock> {
    let mut said = false;
    let gate = take(gate, mode, wait, subject, &mut said)?;
    let mut lock = take(path, mode, wait, subject, &mut said)?;
    if mode == Mode::Exclusive {
        lock._gate = Some(Box::new(gate));
    }
    Ok(lock)
}

fn take(path: &Path, mode: Mode, wait: Wait, subject: &Subject, said: &mut bool) -> Result<Lock> {
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let arg = match mode {
        Mode::Shared => FlockArg::LockSharedNonblock,
        Mode::Exclusive => FlockArg::LockExclusiveNonblock,
    };
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match Flock::lock(file, arg) {
            Ok(held) => {
                tracing::debug!(path = %path.display(), ?mode, waited_ms = started.elapsed().as_millis() as u64, "locked");
                return Ok(Lock {
                    _held: held,
                    _gate: None,
                    path: path.to_path_buf(),
                    mode,
                });
            }
            Err((f, Errno::EWOULDBLOCK)) => file = f,
            Err((_, errno)) => return Err(io(errno.into())),
        }
        let patience = match wait {
            Wait::No => {
                return Err(LockError::Busy {
                    what: subject.what.clone(),
                    why: subject.why.clone(),
                })
            }
            Wait::Block => Duration::ZERO,
            Wait::Quietly(patience) => patience,
        };
        if !*said && started.elapsed() >= patience {
            tracing::warn!(
                "Blocking waiting for file lock on {}: {}",
                subject.what,
                subject.why
            );
            *said = true;
        }
        if crate::signals::interrupted() {
            return Err(LockError::Interrupted(subject.what.clone()));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            what: "the store /s".into(),
            why: "gc has it".into(),
        }
    }

    fn take(dir: &Path, mode: Mode, wait: Wait) -> Result<Lock> {
        acquire(dir, mode, wait, &subject())
    }

    #[test]
    fn shared_holds_do_not_exclude_each_other() {
        let t = tempfile::tempdir().unwrap();
        let a = take(t.path(), Mode::Shared, Wait::No).unwrap();
        let b = take(t.path(), Mode::Shared, Wait::No).unwrap();
        assert_eq!((a.mode(), b.mode()), (Mode::Shared, Mode::Shared));
        assert_eq!(a.path(), t.path());
    }

    #[test]
    fn an_exclusive_lock_excludes_shared_and_exclusive_ones() {
        let t = tempfile::tempdir().unwrap();
        let shared = take(t.path(), Mode::Shared, Wait::No).unwrap();
        assert!(matches!(
            take(t.path(), Mode::Exclusive, Wait::No),
            Err(LockError::Busy { .. })
        ));
        drop(shared);
        let alone = take(t.path(), Mode::Exclusive, Wait::No).unwrap();
        for mode in [Mode::Shared, Mode::Exclusive] {
            assert!(matches!(
                take(t.path(), mode, Wait::No),
                Err(LockError::Busy { .. })
            ));
        }
        drop(alone);
        take(t.path(), Mode::Exclusive, Wait::No).unwrap();
    }

    #[test]
    fn no_wait_names_what_is_busy_and_why() {
        let t = tempfile::tempdir().unwrap();
        let _held = take(t.path(), Mode::Exclusive, Wait::No).unwrap();
        let err = take(t.path(), Mode::Shared, Wait::No).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the store /s is busy: gc has it; not waiting, as --no-wait says"
        );
    }

    /// A shared taker that comes while an exclusive one waits (for the
    /// shared holders before it) waits for that one.
    #[test]
    fn a_waiting_exclusive_taker_goes_before_later_shared_ones() {
        let t = tempfile::tempdir().unwrap();
        let gate = t.path().join("gate");
        std::fs::create_dir(&gate).unwrap();
        let fair = |mode, wait| acquire_fair(t.path(), &gate, mode, wait, &subject());
        let first = fair(Mode::Shared, Wait::No).unwrap();
        // Shared holds alone never keep one another out.
        drop(fair(Mode::Shared, Wait::No).unwrap());
        std::thread::scope(|s| {
            let gc = s.spawn(|| fair(Mode::Exclusive, Wait::Block).unwrap());
            let deadline = Instant::now() + Duration::from_secs(5);
            // Once the gc waits at the gate, later shared takers are held back.
            loop {
                match fair(Mode::Shared, Wait::No) {
                    Err(LockError::Busy { .. }) => break,
                    Ok(later) => drop(later),
                    Err(e) => panic!("{e}"),
                }
                assert!(Instant::now() < deadline, "the gc never closed the gate");
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(!gc.is_finished(), "the gc went before the first holder");
            drop(first);
            let gc = gc.join().unwrap();
            assert_eq!(gc.mode(), Mode::Exclusive);
            assert!(matches!(
                fair(Mode::Shared, Wait::No),
                Err(LockError::Busy { .. })
            ));
            drop(gc);
        });
        fair(Mode::Shared, Wait::No).unwrap();
    }

    #[test]
    fn a_waiter_gets_the_lock_once_it_is_released() {
        let t = tempfile::tempdir().unwrap();
        let held = take(t.path(), Mode::Exclusive, Wait::No).unwrap();
        let released = Instant::now() + Duration::from_millis(300);
        std::thread::scope(|s| {
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                drop(held);
            });
            for wait in [Wait::Block, Wait::Quietly(Duration::from_secs(5))] {
                let lock = take(t.path(), Mode::Exclusive, wait).unwrap();
                assert!(Instant::now() >= released, "the lock was taken while held");
                drop(lock);
            }
        });
    }
}
