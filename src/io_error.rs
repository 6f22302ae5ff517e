//! The one shape of an I/O error in genoci: what was being done, to which
//! path, and the cause, printed `create directory /x: Permission denied`.
//! Module errors wrap it (`#[from]`) rather than each keeping a copy.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("{op} {}", .path.display())]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    /// For `map_err`: the failure of `op` on `path` (`?` then turns it
    /// into the error of whichever module wraps it).
    pub fn at(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> IoError {
        let path = path.into();
        move |source| IoError { op, path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_path_and_cause_each_once() {
        let e = IoError::at("read", "/x")(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(
            crate::error_chain(&e),
            "read /x: No such file or directory (os error 2)"
        );
    }
}
