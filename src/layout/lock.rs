//! One genoci at a time per layout and store.
//!
//! API: `pub struct Lock` (released on drop), `pub fn lock(dir: &Path) -> Result<Lock>`: an exclusive
//! non-blocking `flock` on the directory itself; if held, `LayoutError::Locked` naming the directory.
