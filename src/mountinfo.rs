//! The mount table of this mount namespace (`/proc/self/mountinfo`), and
//! taking away the mounts found below a tree.

use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::io_error::IoError;

pub const PATH: &str = "/proc/self/mountinfo";

/// Every mount point, in table order: parents before children, and lower
/// mounts before the ones stacked on them.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    Ok(parse(&std::fs::read_to_string(PATH)?))
}

/// The mount points of a mountinfo table.
pub fn parse(table: &str) -> Vec<PathBuf> {
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// The filesystem type (`btrfs`, `ext4`, ...) of the mount that holds
/// `path`; `None` when no mount does (a path outside this namespace's root).
pub fn fs_type(path: &Path) -> io::Result<Option<String>> {
    let path = std::fs::canonicalize(path)?;
    Ok(fs_type_in(&std::fs::read_to_string(PATH)?, &path))
}

/// [`fs_type`] in a mountinfo table: the deepest mount point above `path`,
/// the last one of equal depth (a mount stacked on another hides it).
fn fs_type_in(table: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in table.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4).map(|f| unescape(f)) else {
            continue;
        };
        // Optional fields end at a lone `-`; the type follows it.
        let kind = fields.iter().skip(6).skip_while(|f| **f != "-").nth(1);
        let (Some(kind), true) = (kind, path.starts_with(&point)) else {
            continue;
        };
        let depth = point.components().count();
        if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, kind.to_string()));
        }
    }
    best.map(|(_, kind)| kind)
}

/// Decode the octal escapes (`\040` for a space) of a mountinfo field.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Mount points of `mountinfo` at or below `dir`, deepest first (and, for
/// mounts stacked on one point, the top one first). With `keep_dir_mount`,
/// the bottom mount at `dir` itself is the tree (an overlay work tree) and
/// is left out.
fn mounts_at_or_below(mountinfo: &str, dir: &Path, keep_dir_mount: bool) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = parse(mountinfo)
        .into_iter()
        .filter(|point| point.starts_with(dir))
        .collect();
    if keep_dir_mount {
        if let Some(bottom) = found.iter().position(|p| p == dir) {
            found.remove(bottom);
        }
    }
    // mountinfo lists parents before children and lower mounts before the
    // ones stacked on them: reversed, then stably sorted by depth.
    found.reverse();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Lazily unmount every mount at or below `tree`, deepest first, and say
/// which were there; with `tree_is_mount` (the driver's
/// [`tree_is_mount`](crate::driver::SnapshotDriver::tree_is_mount)), all
/// but the tree's own.
pub fn release_mounts_under(tree: &Path, tree_is_mount: bool) -> Result<Vec<PathBuf>, IoError> {
    let tree = std::fs::canonicalize(tree).map_err(IoError::at("resolve", tree))?;
    let mountinfo = std::fs::read_to_string(PATH).map_err(IoError::at("read", PATH))?;
    let points = mounts_at_or_below(&mountinfo, &tree, tree_is_mount);
    for point in &points {
        match umount2(point, MntFlags::MNT_DETACH) {
            // Already gone with a parent detached through propagation.
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(errno) => return Err(IoError::at("unmount", point)(errno.into())),
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b\011c\\d"), PathBuf::from("/a b\tc\\\\d"));
        assert_eq!(unescape(r"/x\134y"), PathBuf::from("/x\\y"));
        assert_eq!(unescape(r"/plain\"), PathBuf::from(r"/plain\"));
    }

    #[test]
    fn the_type_is_that_of_the_deepest_mount_holding_the_path() {
        let table = "1 0 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n\
                     2 1 7:0 / /srv/b rw - btrfs /dev/loop0 rw\n\
                     3 1 0:5 / /srv/bb rw - tmpfs t rw\n\
                     4 2 7:1 / /srv/b rw master:2 - xfs /dev/loop1 rw\n";
        let of = |p: &str| fs_type_in(table, Path::new(p));
        assert_eq!(of("/srv/b/x/y").as_deref(), Some("xfs"));
        assert_eq!(of("/srv/bb").as_deref(), Some("tmpfs"));
        assert_eq!(of("/srv/bc").as_deref(), Some("ext4"));
        assert_eq!(fs_type_in("", Path::new("/x")), None);
    }

    #[test]
    fn mount_points_are_the_fifth_field() {
        let table =
            "22 1 0:21 / /proc rw,nosuid - proc proc rw\n30 22 0:5 / /my\\040dir rw - tmpfs t rw\n";
        assert_eq!(
            parse(table),
            vec![PathBuf::from("/proc"), PathBuf::from("/my dir")]
        );
    }

    #[test]
    fn mounts_are_found_deepest_first() {
        let info = "\
22 1 0:20 / / rw - ext4 /dev/sda rw
30 22 0:21 / /t/tree rw - tmpfs t rw
31 30 0:22 / /t/tree/a\\040b rw - tmpfs t rw
32 31 0:23 / /t/tree/a\\040b/c rw - tmpfs t rw
33 30 0:24 / /t/tree2 rw - tmpfs t rw
34 31 0:25 / /t/tree/a\\040b rw - tmpfs t rw
";
        assert_eq!(
            mounts_at_or_below(info, Path::new("/t/tree"), false),
            [
                PathBuf::from("/t/tree/a b/c"),
                PathBuf::from("/t/tree/a b"),
                PathBuf::from("/t/tree/a b"),
                PathBuf::from("/t/tree"),
            ]
        );
    }

    #[test]
    fn a_tree_that_is_a_mount_keeps_it_but_not_what_is_stacked_on_it() {
        let info = "\
22 1 0:20 / / rw - ext4 /dev/sda rw
30 22 0:21 / /t/tree rw - overlay none rw
31 30 0:22 / /t/tree/proc rw - proc proc rw
35 30 0:26 / /t/tree rw - tmpfs hook rw
";
        assert_eq!(
            mounts_at_or_below(info, Path::new("/t/tree"), true),
            [PathBuf::from("/t/tree/proc"), PathBuf::from("/t/tree")]
        );
        assert_eq!(
            mounts_at_or_below(info, Path::new("/t/tree"), false).len(),
            3
        );
    }
}
