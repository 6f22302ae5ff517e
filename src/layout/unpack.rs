//! Unpacking tar streams into a tree without ever writing outside it:
//! layers (whiteouts and opaque markers applied) and plain tarballs for `expand`.
//!
//! API: `Layout::apply_layer(&self, layer: &Descriptor, tree: &Path) -> Result<()>` (gzip/zstd/plain,
//! found by magic bytes), `pub fn extract_tarball(path: &Path, tree: &Path) -> Result<()>` (gzip, xz,
//! bzip2, zstd or plain by magic bytes; no whiteout handling), both keeping owners, modes, xattrs,
//! hard links, symlinks and device nodes.
//!
//! Paths are resolved as if the tree were `/`: a leading `/` is dropped, `..`
//! stops at the root, and a symlink met on the way to an entry's parent is
//! followed *inside the tree* (an absolute target restarts at the tree's
//! root), never on the host. That is what a chroot would see, so layers that
//! write `bin/x` through a usr-merged `bin -> usr/bin` keep working. The
//! entry's own last component is never followed: it is replaced.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use filetime::FileTime;
use oci_spec::image::Descriptor;
use tar::EntryType;

use super::blobs::read_error;
use super::{Layout, LayoutError, Result};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const CHECK_SIGNALS_EVERY: usize = 256;
/// Decompressed bytes are handed from the decompressing thread to the
/// unpacking one in chunks of this size, at most `PIPE_DEPTH` waiting.
const PIPE_CHUNK: usize = 1 << 20;
const PIPE_DEPTH: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Gzip,
    Zstd,
    Xz,
    Bzip2,
    Tar,
}

/// The compression of a stream, from its first bytes (media types lie:
/// `docker save` output has been seen labelled gzip while plain).
fn sniff(r: &mut impl BufRead) -> io::Result<Format> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if head.starts_with(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) {
        Format::Xz
    } else if head.starts_with(b"BZh") {
        Format::Bzip2
    } else {
        Format::Tar
    })
}

fn decompress<'a, R: BufRead + 'a>(format: Format, r: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match format {
        Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Format::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(r)),
        Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
        Format::Tar => Box::new(r),
    })
}

/// Run `consume` on the decompressed stream of `raw`, decompressing on a
/// thread of its own: inflating and creating files then use two cores, and
/// at most `PIPE_DEPTH` chunks are held whatever the stream's size. Once
/// the compressed stream ends, the rest of `raw` is read too (a blob's
/// digest covers bytes after it), provided `consume` reads to the end.
fn decompressed<R, T>(
    format: Format,
    mut raw: R,
    consume: impl FnOnce(&mut PipeReader) -> Result<T>,
) -> Result<T>
where
    R: BufRead + Send,
{
    let (tx, rx) = mpsc::sync_channel(PIPE_DEPTH);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let end = match decompress(format, &mut raw).and_then(|mut d| pump(&mut d, &tx)) {
                // Nobody listens any more (the consumer failed): stop here.
                Ok(false) => return,
                Ok(true) => io::copy(&mut raw, &mut io::sink()).map(drop),
                Err(e) => Err(e),
            };
            let _ = tx.send(end.map(|()| Vec::new()));
        });
        let mut reader = PipeReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            ended: false,
        };
        // Dropping the reader (and its receiver) stops the thread if it is
        // still sending.
        consume(&mut reader)
    })
}

/// Send `src` in chunks until its end (`true`), or until nobody listens (`false`).
fn pump(src: &mut dyn Read, tx: &mpsc::SyncSender<io::Result<Vec<u8>>>) -> io::Result<bool> {
    loop {
        let mut chunk = vec![0u8; PIPE_CHUNK];
        let mut filled = 0;
        while filled < chunk.len() {
            match src.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(true);
        }
        chunk.truncate(filled);
        if tx.send(Ok(chunk)).is_err() {
            return Ok(false);
        }
    }
}

/// The reading end of [`decompressed`]'s thread: chunks, then an empty one
/// for the end (or the error that ended it).
struct PipeReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            let next = self.rx.recv().unwrap_or_else(|_| {
                Err(io::Error::other("the decompressing thread stopped early"))
            });
            match next {
                Ok(chunk) if chunk.is_empty() => self.ended = true,
                Ok(chunk) => (self.chunk, self.pos) = (chunk, 0),
                Err(e) => {
                    self.ended = true;
                    return Err(e);
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

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

/// An entry's metadata as the archive gives it (PAX records win).
#[derive(Debug, Clone)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: FileTime,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
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
        for (rel, meta) in std::mem::take(&mut self.dirs) {
            if let Some(full) = self.real_dir(&rel) {
                self.set_meta(&full, &meta, false)?;
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

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, source: &Path) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let meta = read_meta(entry).map_err(|e| read_error(source, e))?;
        let comps = clean(&raw);
        let Some((name, parent)) = comps.split_last() else {
            // The root of a tree is the snapshot's, 0755 as image tools
            // make a rootfs: a tarball's `./` (often a 0700 temp dir) does
            // not change it, and layers never carry it.
            return Ok(());
        };
        let parent = self.resolve_dir(parent.to_vec(), &raw)?;
        self.keep_times(&parent)?;
        if self.whiteouts && name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&parent, name);
        }
        self.make_dirs(&parent)?;
        let rel = parent.join(name);
        let full = self.root.join(&rel);

        let existing = fs::symlink_metadata(&full).ok();
        match kind {
            EntryType::Directory => {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    remove(&full, existing.as_ref())?;
                    fs::create_dir(&full).map_err(LayoutError::io("create directory", &full))?;
                }
                self.dirs.push((rel.clone(), meta));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove(&full, existing.as_ref())?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&full)
                    .map_err(LayoutError::io("create", &full))?;
                io::copy(entry, &mut file).map_err(|e| read_error(source, e))?;
                drop(file);
                self.set_meta(&full, &meta, false)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw, "symlink without a target"))?
                    .into_owned();
                remove(&full, existing.as_ref())?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
                    .map_err(LayoutError::io("create symlink", &full))?;
                self.set_meta(&full, &meta, true)?;
            }
            EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw, "hard link without a target"))?
                    .into_owned();
                let target_comps = clean(&target_raw);
                let Some((target_name, target_parent)) = target_comps.split_last() else {
                    return Err(self.unsafe_entry(&raw, "hard link to the root"));
                };
                let target_parent = self.resolve_dir(target_parent.to_vec(), &target_raw)?;
                let target = self.root.join(target_parent.join(target_name));
                let target_meta = fs::symlink_metadata(&target)
                    .map_err(LayoutError::io("stat hard link target", &target))?;
                if target_meta.is_dir() {
                    return Err(self.unsafe_entry(&raw, "hard link to a directory"));
                }
                if existing
                    .as_ref()
                    .is_some_and(|m| m.dev() == target_meta.dev() && m.ino() == target_meta.ino())
                {
                    self.written.insert(rel);
                    return Ok(());
                }
                remove(&full, existing.as_ref())?;
                // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
                fs::hard_link(&target, &full)
                    .map_err(LayoutError::io("create hard link", &full))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                remove(&full, existing.as_ref())?;
                let header = entry.header();
                let (sflag, dev) = match kind {
                    EntryType::Fifo => (nix::sys::stat::SFlag::S_IFIFO, 0),
                    _ => {
                        let major = header.device_major().ok().flatten().unwrap_or(0);
                        let minor = header.device_minor().ok().flatten().unwrap_or(0);
                        let sflag = if kind == EntryType::Char {
                            nix::sys::stat::SFlag::S_IFCHR
                        } else {
                            nix::sys::stat::SFlag::S_IFBLK
                        };
                        (sflag, libc::makedev(major, minor))
                    }
                };
                nix::sys::stat::mknod(
                    &full,
                    sflag,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(|e| LayoutError::io("create device node", &full)(e.into()))?;
                self.set_meta(&full, &meta, false)?;
            }
            other => {
                tracing::warn!(archive = %self.archive, entry = %String::from_utf8_lossy(&raw), kind = ?other, "skipped entry of unsupported type");
                return Ok(());
            }
        }
        self.written.insert(rel);
        Ok(())
    }

    /// `.wh.NAME` removes NAME; `.wh..wh..opq` empties its directory of what
    /// lower layers put there.
    fn whiteout(&mut self, parent: &Path, name: &OsStr) -> Result<()> {
        let name = name.as_bytes();
        if name == OPAQUE_MARKER {
            let full = self.root.join(parent);
            return self.prune_lower(&full, parent);
        }
        if name.starts_with(b".wh..wh.") {
            // aufs bookkeeping (.wh..wh.plnk and the like), not a whiteout.
            return Ok(());
        }
        let target = OsStr::from_bytes(&name[WHITEOUT_PREFIX.len()..]);
        if target.is_empty() || target == "." || target == ".." {
            return Err(self.unsafe_entry(name, "whiteout of no name"));
        }
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
                    return Err(LayoutError::Io {
                        op: "create directory",
                        path: full,
                        source: io::Error::from_raw_os_error(libc::ENOTDIR),
                    })
                }
                Err(_) => {
                    self.keep_times(cur.parent().unwrap_or(Path::new("")))?;
                    fs::create_dir(&full).map_err(LayoutError::io("create directory", &full))?;
                    fs::set_permissions(&full, fs::Permissions::from_mode(0o755))
                        .map_err(LayoutError::io("chmod", &full))?;
                    self.written.insert(cur.clone());
                }
            }
        }
        Ok(())
    }

    /// Owner, then the xattrs the entry does not carry go (a directory a
    /// lower layer made keeps its own; a new file inherits a default ACL),
    /// then mode (a chown clears setuid bits), then xattrs (a chown clears
    /// `security.capability`), then times.
    fn set_meta(&self, full: &Path, meta: &Meta, symlink: bool) -> Result<()> {
        std::os::unix::fs::lchown(full, Some(meta.uid), Some(meta.gid))
            .map_err(LayoutError::io("chown", full))?;
        let present = crate::xattr::list(full).map_err(LayoutError::io("read xattrs", full))?;
        for (name, _) in present {
            if meta.xattrs.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if let Err(e) = crate::xattr::remove(full, &name) {
                if !matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) {
                    return Err(LayoutError::io("remove xattr", full)(e));
                }
                tracing::warn!(path = %full.display(), xattr = %String::from_utf8_lossy(&name), error = %e, "xattr not removed");
            }
        }
        if !symlink {
            fs::set_permissions(full, fs::Permissions::from_mode(meta.mode & 0o7777))
                .map_err(LayoutError::io("chmod", full))?;
        }
        for (name, value) in &meta.xattrs {
            if let Err(e) = crate::xattr::set(full, name, value) {
                let unsupported = matches!(e.raw_os_error(), Some(libc::ENOTSUP))
                    || (symlink && e.raw_os_error() == Some(libc::EPERM));
                if !unsupported {
                    return Err(LayoutError::io("set xattr", full)(e));
                }
                tracing::warn!(path = %full.display(), xattr = %String::from_utf8_lossy(name), error = %e, "xattr not kept");
            }
        }
        filetime::set_symlink_file_times(full, meta.mtime, meta.mtime)
            .map_err(LayoutError::io("set times", full))
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

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let header = entry.header();
    let old = header.as_old();
    let mut uid = blank_is_zero(&old.uid, header.uid())?;
    let mut gid = blank_is_zero(&old.gid, header.gid())?;
    let mut mtime = FileTime::from_unix_time(blank_is_zero(&old.mtime, header.mtime())? as i64, 0);
    let mode = header.mode()?;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((name.to_vec(), value.to_vec()));
                continue;
            }
            let text = std::str::from_utf8(value).unwrap_or("");
            match key {
                b"uid" => uid = text.parse().unwrap_or(uid),
                b"gid" => gid = text.parse().unwrap_or(gid),
                b"mtime" => mtime = parse_pax_time(text).unwrap_or(mtime),
                _ => {}
            }
        }
    }
    let id = |v: u64| {
        u32::try_from(v)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "owner id out of range"))
    };
    Ok(Meta {
        mode,
        uid: id(uid)?,
        gid: id(gid)?,
        mtime,
        xattrs,
    })
}

/// Some writers leave numeric fields they do not care about empty; GNU tar
/// and Go read those as 0.
fn blank_is_zero(field: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    if field.iter().all(|&b| b == 0 || b == b' ') {
        Ok(0)
    } else {
        parsed
    }
}

/// A PAX time: seconds, optionally with a fraction; negative before 1970
/// (`-1.25` is a quarter second after `-2`).
fn parse_pax_time(text: &str) -> Option<FileTime> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let mut secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let mut nanos: u32 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    if text.starts_with('-') && nanos > 0 {
        secs -= 1;
        nanos = 1_000_000_000 - nanos;
    }
    Some(FileTime::from_unix_time(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;
    use std::io::Write;

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

    #[test]
    fn pax_times_parse() {
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some(FileTime::from_unix_time(1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("12"), Some(FileTime::from_unix_time(12, 0)));
        assert_eq!(
            parse_pax_time("-86400"),
            Some(FileTime::from_unix_time(-86400, 0))
        );
        assert_eq!(
            parse_pax_time("-1.25"),
            Some(FileTime::from_unix_time(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time("x"), None);
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    /// Several pipe chunks of bytes that do not repeat within a chunk.
    fn sample(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn the_pipe_passes_every_byte_and_reads_the_stream_to_its_end() {
        let data = sample(3 * PIPE_CHUNK + 12_345);
        let mut cursor = io::Cursor::new(gzip(&data));
        let back = decompressed(Format::Gzip, &mut cursor, |r| {
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            Ok(back)
        })
        .unwrap();
        assert!(back == data);
        assert_eq!(cursor.position(), cursor.get_ref().len() as u64);
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_an_early_end() {
        let raw = gzip(&sample(2 * PIPE_CHUNK));
        let cut = &raw[..raw.len() / 2];
        let result = decompressed(Format::Gzip, cut, |r| {
            io::copy(r, &mut io::sink()).map_err(LayoutError::io("read", Path::new("x")))
        });
        assert!(result.is_err());
    }

    #[test]
    fn a_consumer_that_gives_up_stops_the_decompressing_thread() {
        // More than the pipe holds: the thread would block forever if
        // nothing told it to stop.
        let data = vec![0u8; (PIPE_DEPTH + 4) * PIPE_CHUNK];
        let mut cursor = io::Cursor::new(data);
        let result: Result<()> = decompressed(Format::Tar, &mut cursor, |r| {
            r.read_exact(&mut [0u8; 10]).unwrap();
            Err(LayoutError::Interrupted)
        });
        assert!(matches!(result, Err(LayoutError::Interrupted)));
        assert!(
            cursor.position() < cursor.get_ref().len() as u64,
            "the rest is not read"
        );
    }
}
