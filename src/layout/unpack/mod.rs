//! Unpacking tar streams into a tree without ever writing outside it:
//! layers (whiteouts and opaque markers applied) and plain tarballs for
//! `expand` (no whiteout handling). Either may be plain tar or gzip, zstd,
//! xz or bzip2, found by magic bytes (`compress`); owners, modes, xattrs,
//! hard links, symlinks and device nodes are kept. The per-entry code is in
//! `entries`, metadata in `meta`.
//!
//! Paths are resolved as if the tree were `/`: a leading `/` is dropped, `..`
//! stops at the root, and a symlink met on the way to an entry's parent is
//! followed *inside the tree* (an absolute target restarts at the tree's
//! root), never on the host. That is what a chroot would see, so layers that
//! write `bin/x` through a usr-merged `bin -> usr/bin` keep working. The
//! entry's own last component is never followed: it is replaced.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;
use oci_spec::image::Descriptor;

mod entries;
mod meta;

use meta::Meta;

use super::blobs::read_error;
use super::compress::{decompressed, sniff};
use super::{Layout, LayoutError, Result};

const CHECK_SIGNALS_EVERY: usize = 256;

/// Unpack the tarball at `path` into `tree` (for `expand`).
pub fn extract_tarball(path: &Path, tree: &Path) -> Result<()> {
    let file = File::open(path).map_err(LayoutError::io("open", path))?;
    unpack_stream(file, path, tree, false)?;
    tracing::debug!(tarball = %path.display(), tree = %tree.display(), "extracted");
    Ok(())
}

/// Unpack the tar stream `stream` (gzip, zstd, xz, bzip2 or plain, found by
/// magic bytes) into `tree`, with a layer's whiteouts and opaque markers
/// applied when `whiteouts` is set; `source` names the stream in errors.
/// The reader behind [`extract_tarball`] and [`Layout::apply_layer`], open to
/// generated-input tests and fuzz targets, which have bytes and no layout.
pub fn unpack_stream(
    stream: impl Read + Send,
    source: &Path,
    tree: &Path,
    whiteouts: bool,
) -> Result<()> {
    let mut buffered = BufReader::with_capacity(1 << 20, stream);
    let format = sniff(&mut buffered).map_err(LayoutError::io("read", source))?;
    let name = source.display().to_string();
    decompressed(format, buffered, |reader| {
        Unpacker::new(tree, &name, whiteouts).run(reader, source)
    })
}

impl Layout {
    /// Apply a layer on top of `tree`: its entries, whiteouts and opaque markers.
    pub fn apply_layer(&self, layer: &Descriptor, tree: &Path) -> Result<()> {
        let mut blob = self.open_blob(layer)?;
        let path = self.descriptor_path(layer)?;
        let name = layer.digest().to_string();
        {
            let mut buffered = BufReader::with_capacity(1 << 20, &mut blob);
            let format = sniff(&mut buffered).map_err(|e| read_error(&path, e))?;
            decompressed(format, buffered, |reader| {
                Unpacker::new(tree, &name, true).run(&mut *reader, &path)?;
                // The tar end may come before the end of the stream; the
                // digest covers all of it.
                io::copy(reader, &mut io::sink()).map_err(|e| read_error(&path, e))?;
                Ok(())
            })?;
        }
        blob.finish()?;
        tracing::debug!(layer = %name, tree = %tree.display(), "applied layer");
        Ok(())
    }
}

struct Unpacker<'a> {
    root: &'a Path,
    archive: &'a str,
    whiteouts: bool,
    /// Paths (relative, resolved) this archive wrote: an opaque marker or a
    /// whiteout only hides what lower layers left.
    written: HashSet<PathBuf>,
    /// Directory metadata (relative paths), set once everything is written
    /// so that the writes below a directory do not change its mtime afterwards.
    dirs: Vec<(PathBuf, Meta)>,
    /// Times of directories this archive does not carry but writes into
    /// (relative paths): restored at the end, as the image has them.
    kept_times: Vec<(PathBuf, FileTime, FileTime)>,
    /// Directories made for entries below them that the archive does not
    /// carry (relative paths): they get the time 0, not the time of the
    /// unpack, so that every unpack of the same layers is the same tree.
    implied: Vec<PathBuf>,
    kept: HashSet<PathBuf>,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, archive: &'a str, whiteouts: bool) -> Self {
        Unpacker {
            root,
            archive,
            whiteouts,
            written: HashSet::new(),
            dirs: Vec::new(),
            kept_times: Vec::new(),
            implied: Vec::new(),
            kept: HashSet::new(),
        }
    }

    fn unsafe_entry(&self, entry: &[u8], reason: &str) -> LayoutError {
        LayoutError::UnsafeEntry {
            archive: self.archive.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.to_string(),
        }
    }

    fn run(mut self, reader: impl Read, source: &Path) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| read_error(source, e))?;
        for (n, entry) in entries.enumerate() {
            if n.is_multiple_of(CHECK_SIGNALS_EVERY) {
                crate::signals::check().map_err(|_| LayoutError::Interrupted)?;
            }
            let mut entry = entry.map_err(|e| read_error(source, e))?;
            self.entry(&mut entry, source)?;
        }
        // A later entry may have replaced a parent of these directories by
        // a symlink (to a host path, say): only a path that is still all
        // directories is the one the archive meant.
        for (rel, atime, mtime) in std::mem::take(&mut self.kept_times) {
            if self.written.contains(&rel) {
                continue;
            }
            if let Some(full) = self.real_dir(&rel) {
                filetime::set_symlink_file_times(&full, atime, mtime)
                    .map_err(LayoutError::io("set times", &full))?;
            }
        }
        for rel in std::mem::take(&mut self.implied) {
            if let Some(full) = self.real_dir(&rel) {
                filetime::set_symlink_file_times(&full, FileTime::zero(), FileTime::zero())
                    .map_err(LayoutError::io("set times", &full))?;
            }
        }
        for (rel, meta) in std::mem::take(&mut self.dirs) {
            if let Some(full) = self.real_dir(&rel) {
                meta::set_meta(&full, &meta, false)?;
            }
        }
        Ok(())
    }

    /// The full path of `rel` if it and each of its parents is a directory
    /// (not a symlink), so that nothing done there lands outside the tree.
    fn real_dir(&self, rel: &Path) -> Option<PathBuf> {
        let mut full = self.root.to_path_buf();
        for c in rel.components() {
            full.push(c);
            if !fs::symlink_metadata(&full).ok()?.is_dir() {
                return None;
            }
        }
        Some(full)
    }

    /// The whiteout of `target` in `parent` removes what lower layers put there.
    fn whiteout(&mut self, parent: &Path, target: &[u8], entry: &[u8]) -> Result<()> {
        if matches!(target, b"" | b"." | b"..") {
            return Err(self.unsafe_entry(entry, "whiteout of no name"));
        }
        let target = OsStr::from_bytes(target);
        let rel = parent.join(target);
        if self.written.contains(&rel) {
            return Ok(());
        }
        let full = self.root.join(&rel);
        let existing = fs::symlink_metadata(&full).ok();
        remove(&full, existing.as_ref())
    }

    /// Remove everything under `dir` this archive did not write.
    fn prune_lower(&self, full: &Path, rel: &Path) -> Result<()> {
        let entries = match fs::read_dir(full) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(LayoutError::io("read directory", full)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(LayoutError::io("read directory", full))?;
            let child_rel = rel.join(entry.file_name());
            let child = entry.path();
            let meta = fs::symlink_metadata(&child).map_err(LayoutError::io("stat", &child))?;
            if self.written.contains(&child_rel) {
                if meta.is_dir() {
                    self.prune_lower(&child, &child_rel)?;
                }
            } else {
                remove(&child, Some(&meta))?;
            }
        }
        Ok(())
    }

    /// Resolve `comps` to a directory path inside the tree, following
    /// symlinks as a chroot would. Components that do not exist yet are
    /// taken as they are (they are created as directories).
    fn resolve_dir(&self, comps: Vec<OsString>, entry: &[u8]) -> Result<PathBuf> {
        let path: PathBuf = comps.into_iter().collect();
        crate::fsutil::resolve_rel(self.root, &path, true)
            .map_err(|e| self.unsafe_entry(entry, &e.to_string()))
    }

    /// Remember the times of directory `rel` before this archive first
    /// writes into it, unless the archive carries it (or made it).
    fn keep_times(&mut self, rel: &Path) -> Result<()> {
        if self.written.contains(rel) || !self.kept.insert(rel.to_path_buf()) {
            return Ok(());
        }
        let full = self.root.join(rel);
        if let Ok(m) = fs::symlink_metadata(&full) {
            if m.is_dir() {
                let atime = FileTime::from_last_access_time(&m);
                let mtime = FileTime::from_last_modification_time(&m);
                self.kept_times.push((rel.to_path_buf(), atime, mtime));
            }
        }
        Ok(())
    }

    /// Create the missing directories of a resolved (symlink-free) path.
    fn make_dirs(&mut self, rel: &Path) -> Result<()> {
        let mut cur = PathBuf::new();
        for c in rel.iter() {
            cur.push(c);
            let full = self.root.join(&cur);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    let not_dir = io::Error::from_raw_os_error(libc::ENOTDIR);
                    return Err(LayoutError::io("create directory", full)(not_dir));
                }
                Err(_) => {
                    self.keep_times(cur.parent().unwrap_or(Path::new("")))?;
                    fs::create_dir(&full).map_err(LayoutError::io("create directory", &full))?;
                    fs::set_permissions(&full, fs::Permissions::from_mode(0o755))
                        .map_err(LayoutError::io("chmod", &full))?;
                    self.written.insert(cur.clone());
                    self.implied.push(cur.clone());
                }
            }
        }
        Ok(())
    }
}

/// Remove whatever is at `full` (a whole directory tree included), never
/// following a symlink.
fn remove(full: &Path, existing: Option<&fs::Metadata>) -> Result<()> {
    match existing {
        None => Ok(()),
        Some(m) if m.is_dir() => {
            fs::remove_dir_all(full).map_err(LayoutError::io("remove directory", full))
        }
        Some(_) => fs::remove_file(full).map_err(LayoutError::io("remove", full)),
    }
}

/// The normal components of an archive path: no root, no `.`, and `..`
/// stopping at the top.
fn clean(raw: &[u8]) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            p => out.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use filetime::FileTime;
    use oci_spec::image::MediaType;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use tar::EntryType;

    /// A tar entry with its name and link name set byte for byte, as a
    /// hostile archive would (the tar crate refuses `..` when asked nicely).
    fn raw(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, name: &str, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        let n = name.as_bytes();
        h.as_old_mut().name[..n.len()].copy_from_slice(n);
        let l = link.as_bytes();
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn tarball(entries: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        entries(&mut b);
        b.into_inner().unwrap()
    }

    struct Sandbox {
        _t: tempfile::TempDir,
        tree: PathBuf,
        outside: PathBuf,
        tarball: PathBuf,
    }

    fn sandbox() -> Sandbox {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        let outside = t.path().join("outside");
        fs::create_dir(&tree).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "secret").unwrap();
        Sandbox {
            tarball: t.path().join("x.tar"),
            tree,
            outside,
            _t: t,
        }
    }

    fn outside_untouched(s: &Sandbox) {
        let names: Vec<_> = fs::read_dir(&s.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("secret")]);
        assert_eq!(
            fs::read_to_string(s.outside.join("secret")).unwrap(),
            "secret"
        );
        let parent: Vec<_> = fs::read_dir(s.tree.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(parent
            .iter()
            .all(|n| n == "tree" || n == "outside" || n == "x.tar"));
    }

    #[test]
    fn dot_dot_and_absolute_paths_stay_inside() {
        let s = sandbox();
        let outside = s.outside.display().to_string();
        let bytes = tarball(|b| {
            raw(b, EntryType::Regular, "../evil", "", b"1");
            raw(b, EntryType::Regular, "a/../../../evil2", "", b"2");
            raw(b, EntryType::Regular, "/abs/evil", "", b"3");
            raw(
                b,
                EntryType::Regular,
                &format!("{outside}/secret"),
                "",
                b"4",
            );
        });
        fs::write(&s.tarball, bytes).unwrap();
        extract_tarball(&s.tarball, &s.tree).unwrap();
        assert_eq!(fs::read(s.tree.join("evil")).unwrap(), b"1");
        assert_eq!(fs::read(s.tree.join("evil2")).unwrap(), b"2");
        assert_eq!(fs::read(s.tree.join("abs/evil")).unwrap(), b"3");
        outside_untouched(&s);
    }

    #[test]
    fn symlinked_parents_resolve_inside_the_tree() {
        let s = sandbox();
        let outside = s.outside.display().to_string();
        let bytes = tarball(|b| {
            raw(b, EntryType::Symlink, "link", &outside, b"");
            raw(b, EntryType::Regular, "link/evil", "", b"1");
            raw(b, EntryType::Symlink, "up", "../../../..", b"");
            raw(b, EntryType::Regular, "up/evil2", "", b"2");
            raw(b, EntryType::Symlink, "loop", "loop", b"");
            // The last component is replaced, never written through.
            raw(
                b,
                EntryType::Symlink,
                "secret",
                &format!("{outside}/secret"),
                b"",
            );
            raw(b, EntryType::Regular, "secret", "", b"3");
        });
        fs::write(&s.tarball, bytes).unwrap();
        extract_tarball(&s.tarball, &s.tree).unwrap();
        let inside = s.tree.join(outside.trim_start_matches('/'));
        assert_eq!(fs::read(inside.join("evil")).unwrap(), b"1");
        assert_eq!(fs::read(s.tree.join("evil2")).unwrap(), b"2");
        assert_eq!(fs::read(s.tree.join("secret")).unwrap(), b"3");
        outside_untouched(&s);

        let bytes = tarball(|b| raw(b, EntryType::Regular, "loop/x", "", b"1"));
        fs::write(&s.tarball, bytes).unwrap();
        assert!(matches!(
            extract_tarball(&s.tarball, &s.tree),
            Err(LayoutError::UnsafeEntry { .. })
        ));
    }

    #[test]
    fn hard_links_never_reach_outside() {
        let s = sandbox();
        let outside = s.outside.display().to_string();
        for target in [
            format!("{outside}/secret"),
            "../outside/secret".to_string(),
            "/etc/passwd".to_string(),
        ] {
            let bytes = tarball(|b| raw(b, EntryType::Link, "hl", &target, b""));
            fs::write(&s.tarball, bytes).unwrap();
            assert!(extract_tarball(&s.tarball, &s.tree).is_err(), "{target}");
            assert!(!s.tree.join("hl").exists());
        }
        // A target inside the tree, named absolutely, is the tree's own file.
        let bytes = tarball(|b| {
            raw(b, EntryType::Directory, "etc/", "", b"");
            raw(b, EntryType::Regular, "etc/passwd", "", b"in tree");
            raw(b, EntryType::Link, "hl", "/etc/passwd", b"");
            raw(b, EntryType::Symlink, "dir", &outside, b"");
            raw(b, EntryType::Link, "hl2", "dir/../etc/passwd", b"");
        });
        fs::write(&s.tarball, bytes).unwrap();
        extract_tarball(&s.tarball, &s.tree).unwrap();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&s.tree.join("hl")), ino(&s.tree.join("etc/passwd")));
        assert_eq!(fs::read(s.tree.join("hl2")).unwrap(), b"in tree");
        outside_untouched(&s);
    }

    #[test]
    fn every_compression_is_found_by_magic() {
        let s = sandbox();
        let plain = tarball(|b| raw(b, EntryType::Regular, "f", "", b"data"));
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&plain).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&plain[..], 1).unwrap();
        let xz = {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&plain).unwrap();
            e.finish().unwrap()
        };
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&plain).unwrap();
            e.finish().unwrap()
        };
        for bytes in [plain.clone(), gz, zst, xz, bz] {
            fs::remove_dir_all(&s.tree).unwrap();
            fs::create_dir(&s.tree).unwrap();
            fs::write(&s.tarball, bytes).unwrap();
            extract_tarball(&s.tarball, &s.tree).unwrap();
            assert_eq!(fs::read(s.tree.join("f")).unwrap(), b"data");
        }
    }

    fn put_layer(l: &Layout, bytes: &[u8], media_type: &str) -> Descriptor {
        let mut w = l.blob_writer().unwrap();
        w.write_all(bytes).unwrap();
        w.finish(MediaType::from(media_type)).unwrap()
    }

    #[test]
    fn docker_and_uncompressed_layers_apply() {
        let s = sandbox();
        let l = Layout::open_or_create(&s.outside.join("oci")).unwrap();
        let plain = tarball(|b| {
            raw(b, EntryType::Directory, "./etc/", "", b"");
            raw(b, EntryType::Regular, "./etc/os-release", "", b"ID=test\n");
        });
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&plain).unwrap();
        let gz = e.finish().unwrap();
        for (bytes, media_type) in [
            (&gz, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            (&plain, "application/vnd.oci.image.layer.v1.tar"),
            (&plain, "application/vnd.docker.image.rootfs.diff.tar"),
        ] {
            fs::remove_dir_all(&s.tree).unwrap();
            fs::create_dir(&s.tree).unwrap();
            let desc = put_layer(&l, bytes, media_type);
            l.apply_layer(&desc, &s.tree).unwrap();
            assert_eq!(
                fs::read(s.tree.join("etc/os-release")).unwrap(),
                b"ID=test\n"
            );
        }
    }

    #[test]
    fn a_corrupt_layer_is_refused() {
        let s = sandbox();
        let l = Layout::open_or_create(&s.outside.join("oci")).unwrap();
        let plain = tarball(|b| raw(b, EntryType::Regular, "f", "", b"data"));
        let desc = put_layer(&l, &plain, "application/vnd.oci.image.layer.v1.tar");
        let mut bytes = plain.clone();
        bytes[600] = b'X';
        fs::write(l.descriptor_path(&desc).unwrap(), bytes).unwrap();
        assert!(matches!(
            l.apply_layer(&desc, &s.tree),
            Err(LayoutError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_opaque_marker_keeps_entries_of_its_own_layer() {
        let s = sandbox();
        let l = Layout::open_or_create(&s.outside.join("oci")).unwrap();
        fs::create_dir(s.tree.join("a")).unwrap();
        fs::write(s.tree.join("a/old"), "lower").unwrap();
        fs::create_dir(s.tree.join("a/sub")).unwrap();
        fs::write(s.tree.join("a/sub/old"), "lower").unwrap();
        fs::write(s.tree.join("gone"), "lower").unwrap();
        let plain = tarball(|b| {
            raw(b, EntryType::Regular, "a/-first", "", b"same layer");
            raw(b, EntryType::Directory, "a/sub/", "", b"");
            raw(b, EntryType::Regular, "a/.wh..wh..opq", "", b"");
            raw(b, EntryType::Regular, ".wh.gone", "", b"");
            raw(b, EntryType::Regular, "a/.wh.-first", "", b"");
            raw(b, EntryType::Regular, ".wh.never-there", "", b"");
        });
        let desc = put_layer(&l, &plain, "application/vnd.oci.image.layer.v1.tar");
        l.apply_layer(&desc, &s.tree).unwrap();
        assert_eq!(fs::read(s.tree.join("a/-first")).unwrap(), b"same layer");
        assert!(s.tree.join("a/sub").is_dir());
        assert!(!s.tree.join("a/sub/old").exists());
        assert!(!s.tree.join("a/old").exists());
        assert!(!s.tree.join("gone").exists());
        assert!(!s.tree.join(".wh.never-there").exists());
    }

    #[test]
    fn entries_lose_xattrs_they_do_not_carry_and_untouched_dirs_keep_times() {
        let s = sandbox();
        fs::create_dir_all(s.tree.join("d")).unwrap();
        fs::create_dir_all(s.tree.join("e")).unwrap();
        crate::xattr::set(&s.tree.join("d"), b"user.gone", b"1").unwrap();
        let old = FileTime::from_unix_time(1_000_000_000, 0);
        filetime::set_file_times(s.tree.join("e"), old, old).unwrap();
        let bytes = tarball(|b| {
            raw(b, EntryType::Directory, "d/", "", b"");
            raw(b, EntryType::Regular, "e/f", "", b"new");
        });
        fs::write(&s.tarball, bytes).unwrap();
        extract_tarball(&s.tarball, &s.tree).unwrap();
        assert_eq!(crate::xattr::list(&s.tree.join("d")).unwrap(), vec![]);
        let e = fs::metadata(s.tree.join("e")).unwrap();
        assert_eq!(e.mtime(), 1_000_000_000);
        assert_eq!(fs::read(s.tree.join("e/f")).unwrap(), b"new");
    }
}
