//! Ctrl-C: the first SIGINT or SIGTERM asks every long loop to stop at its
//! next check, so that work trees are discarded and the layout stays valid.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Install the handlers (once, from the binary).
pub fn install() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.expect("install signal handler");
    }
}

/// Run `f` with Ctrl-C and Ctrl-\ left to a command that has the terminal
/// (as `system(3)` does): they are the command's to handle, not a request
/// to stop genoci. SIGTERM still is one.
pub fn while_foreground<T>(f: impl FnOnce() -> T) -> T {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    let mut saved = Vec::new();
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler code.
        if let Ok(old) = unsafe { sigaction(sig, &ignore) } {
            saved.push((sig, old));
        }
    }
    let result = f();
    for (sig, old) in saved {
        // SAFETY: puts back the action that was installed before.
        let _ = unsafe { sigaction(sig, &old) };
    }
    result
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err` once Ctrl-C was pressed.
pub fn check() -> Result<(), Interrupted> {
    if interrupted() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}
