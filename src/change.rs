//! The model `driver/` and `layout/` share: a layer is a list of changes to
//! a tree, and in the layer's tar a deletion is a whiteout entry. Drivers
//! find the changes; the layout writes them as tar entries and reads the
//! whiteouts back. The naming rules (OCI image spec, "Whiteouts") live only
//! here, so the writer and the reader cannot drift apart.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One entry of a layer, relative to the root of the tree (no leading `/`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// The entry at this path is new or differs from the base; the layer carries
    /// it as it is in the work tree (a directory entry alone, not its children).
    Write(PathBuf),
    /// The base had an entry here and the work tree has none: a `.wh.NAME` whiteout.
    Delete(PathBuf),
    /// Every entry the base had below this directory is gone: a `.wh..wh..opq`
    /// marker. The directory itself and whatever it now holds are listed as
    /// `Write`s of their own.
    Opaque(PathBuf),
}

impl Change {
    pub fn path(&self) -> &Path {
        match self {
            Change::Write(p) | Change::Delete(p) | Change::Opaque(p) => p,
        }
    }
}

/// A file name starting with this deletes the rest of the name from the
/// layers below.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The prefix of names that are bookkeeping (aufs' `.wh..wh.plnk` and the
/// like), the opaque marker among them, rather than whiteouts.
const META_PREFIX: &[u8] = b".wh..wh.";
/// The file name that empties its directory of what lower layers put there.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// What a file name in a layer stands for.
#[derive(Debug, PartialEq, Eq)]
pub enum LayerName<'a> {
    /// An ordinary entry.
    Entry,
    /// `.wh.NAME`: NAME is deleted (NAME may be empty, `.` or `..`: the
    /// reader refuses those).
    Whiteout(&'a [u8]),
    /// `.wh..wh..opq`: the directory holding it is opaque.
    Opaque,
    /// Other `.wh..wh.` names: bookkeeping of the tool that wrote the layer.
    Meta,
}

impl<'a> LayerName<'a> {
    pub fn of(name: &'a [u8]) -> Self {
        if name == OPAQUE_MARKER {
            LayerName::Opaque
        } else if name.starts_with(META_PREFIX) {
            LayerName::Meta
        } else if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            LayerName::Whiteout(target)
        } else {
            LayerName::Entry
        }
    }
}

/// The tar path of the whiteout for `rel`: `dir/.wh.name`.
pub fn whiteout_path(rel: &Path) -> Vec<u8> {
    let name = rel.file_name().map_or(&[][..], |n| n.as_bytes());
    let mut path = parent_prefix(rel);
    path.extend_from_slice(WHITEOUT_PREFIX);
    path.extend_from_slice(name);
    path
}

/// The tar path of the opaque marker of directory `dir`: `dir/.wh..wh..opq`.
pub fn opaque_path(dir: &Path) -> Vec<u8> {
    let mut path = dir.as_os_str().as_bytes().to_vec();
    path.push(b'/');
    path.extend_from_slice(OPAQUE_MARKER);
    path
}

/// `dir/` for `dir/name`, empty for a top-level name.
fn parent_prefix(rel: &Path) -> Vec<u8> {
    match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => {
            let mut v = p.as_os_str().as_bytes().to_vec();
            v.push(b'/');
            v
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_as_they_are_written() {
        let wh = whiteout_path(Path::new("etc/shadow"));
        assert_eq!(wh, b"etc/.wh.shadow");
        assert_eq!(whiteout_path(Path::new("top")), b".wh.top");
        let name = wh.rsplit(|&b| b == b'/').next().unwrap();
        assert_eq!(LayerName::of(name), LayerName::Whiteout(b"shadow"));
        let opq = opaque_path(Path::new("dev"));
        assert_eq!(opq, b"dev/.wh..wh..opq");
        assert_eq!(LayerName::of(&opq[4..]), LayerName::Opaque);
        assert_eq!(LayerName::of(b".wh..wh.plnk"), LayerName::Meta);
        assert_eq!(LayerName::of(b"passwd"), LayerName::Entry);
        assert_eq!(LayerName::of(b".wh."), LayerName::Whiteout(b""));
    }
}
