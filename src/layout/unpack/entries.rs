//! One tar entry into the tree, by its type: the dispatch, then one
//! function each for directories, regular files, symlinks, hard links and
//! device nodes or fifos. Each replaces whatever was at the entry's path.

use std::ffi::OsStr;
use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::sys::stat::{Mode, SFlag};
use tar::{EntryType, Header};

use super::meta::{self, Meta};
use super::{clean, remove, Unpacker};
use crate::change::LayerName;
use crate::layout::blobs::read_error;
use crate::layout::{LayoutError, Result};

impl Unpacker<'_> {
    pub(super) fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        source: &Path,
    ) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let meta = meta::read_meta(entry).map_err(|e| read_error(source, e))?;
        let comps = clean(&raw);
        let Some((name, parent)) = comps.split_last() else {
            // The root of a tree is the snapshot's, 0755 as image tools
            // make a rootfs: a tarball's `./` (often a 0700 temp dir) does
            // not change it, and layers never carry it.
            return Ok(());
        };
        let parent = self.resolve_dir(parent.to_vec(), &raw)?;
        self.keep_times(&parent)?;
        if self.whiteouts {
            match LayerName::of(name.as_bytes()) {
                LayerName::Entry => {}
                LayerName::Opaque => return self.prune_lower(&self.root.join(&parent), &parent),
                // aufs bookkeeping (.wh..wh.plnk and the like), not a whiteout.
                LayerName::Meta => return Ok(()),
                LayerName::Whiteout(target) => return self.whiteout(&parent, target, &raw),
            }
        }
        self.make_dirs(&parent)?;
        let rel = parent.join(name);
        let full = self.root.join(&rel);
        let existing = fs::symlink_metadata(&full).ok();
        let existing = existing.as_ref();
        match kind {
            EntryType::Directory => self.directory(&rel, &full, existing, meta)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                regular(entry, &full, existing, &meta, source)?
            }
            EntryType::Symlink => self.symlink(entry, &raw, &full, existing, &meta)?,
            EntryType::Link => self.hard_link(entry, &raw, &full, existing)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                node(entry.header(), &full, existing, &meta)?
            }
            other => {
                tracing::warn!(archive = %self.archive, entry = %String::from_utf8_lossy(&raw), kind = ?other, "skipped entry of unsupported type");
                return Ok(());
            }
        }
        self.written.insert(rel);
        Ok(())
    }

    /// A directory already there is kept (with what lower layers put in
    /// it); its metadata is set at the end, once nothing writes below it.
    fn directory(
        &mut self,
        rel: &Path,
        full: &Path,
        existing: Option<&Metadata>,
        meta: Meta,
    ) -> Result<()> {
        if !existing.is_some_and(|m| m.is_dir()) {
            remove(full, existing)?;
            fs::create_dir(full).map_err(LayoutError::io("create directory", full))?;
        }
        self.dirs.push((rel.to_path_buf(), meta));
        Ok(())
    }

    fn symlink<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        raw: &[u8],
        full: &Path,
        existing: Option<&Metadata>,
        meta: &Meta,
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| self.unsafe_entry(raw, "symlink without a target"))?
            .into_owned();
        remove(full, existing)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), full)
            .map_err(LayoutError::io("create symlink", full))?;
        meta::set_meta(full, meta, true)
    }

    /// The link target is resolved inside the tree as the entry's own
    /// parent is, and must not be a directory.
    fn hard_link<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        raw: &[u8],
        full: &Path,
        existing: Option<&Metadata>,
    ) -> Result<()> {
        let target_raw = entry
            .link_name_bytes()
            .ok_or_else(|| self.unsafe_entry(raw, "hard link without a target"))?
            .into_owned();
        let target_comps = clean(&target_raw);
        let Some((target_name, target_parent)) = target_comps.split_last() else {
            return Err(self.unsafe_entry(raw, "hard link to the root"));
        };
        let target_parent = self.resolve_dir(target_parent.to_vec(), &target_raw)?;
        let target = self.root.join(target_parent.join(target_name));
        let target_meta = fs::symlink_metadata(&target)
            .map_err(LayoutError::io("stat hard link target", &target))?;
        if target_meta.is_dir() {
            return Err(self.unsafe_entry(raw, "hard link to a directory"));
        }
        if existing.is_some_and(|m| m.dev() == target_meta.dev() && m.ino() == target_meta.ino()) {
            return Ok(());
        }
        remove(full, existing)?;
        // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
        fs::hard_link(&target, full).map_err(LayoutError::io("create hard link", full))
    }
}

/// Created private (0600, never through a symlink) and given its mode last.
fn regular<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    full: &Path,
    existing: Option<&Metadata>,
    meta: &Meta,
    source: &Path,
) -> Result<()> {
    remove(full, existing)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(full)
        .map_err(LayoutError::io("create", full))?;
    io::copy(entry, &mut file).map_err(|e| read_error(source, e))?;
    drop(file);
    meta::set_meta(full, meta, false)
}

/// A character or block device, or a fifo.
fn node(header: &Header, full: &Path, existing: Option<&Metadata>, meta: &Meta) -> Result<()> {
    remove(full, existing)?;
    let (kind, dev) = match header.entry_type() {
        EntryType::Fifo => (SFlag::S_IFIFO, 0),
        kind => {
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            let kind = if kind == EntryType::Char {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            (kind, nix::sys::stat::makedev(major.into(), minor.into()))
        }
    };
    nix::sys::stat::mknod(full, kind, Mode::from_bits_truncate(0o600), dev)
        .map_err(|e| LayoutError::io("create device node", full)(e.into()))?;
    meta::set_meta(full, meta, false)
}
