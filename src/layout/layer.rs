//! Writing a layer from a tree and its change set: deterministic tar
//! (sorted, numeric owners, PAX for long names and xattrs, whiteouts),
//! hashed for its diff_id and compressed while written (`compress`).

use std::collections::HashMap;
use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::Descriptor;
use tar::{EntryType, Header};

use super::blobs::BlobWriter;
use super::compress::{Compression, Compressor, Hashing};
use super::{Layout, LayoutError, Result};
use crate::change::{self, Change, LayerName};

#[derive(Debug, Clone, Default)]
pub struct LayerOptions {
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: no entry is newer than this.
    pub source_date_epoch: Option<i64>,
}

/// A layer blob in the layout and what the image config needs to know of it.
#[derive(Debug, Clone)]
pub struct WrittenLayer {
    pub descriptor: Descriptor,
    /// `sha256:` of the uncompressed tar, for `rootfs.diff_ids`.
    pub diff_id: String,
    /// Tar entries, whiteouts included.
    pub entries: usize,
}

/// Longest name (and link name) a ustar header holds without a PAX record.
const USTAR_NAME_MAX: usize = 100;
/// Largest number the 7-digit octal uid/gid fields hold.
const USTAR_ID_MAX: u64 = 0o7_777_777;
/// Largest size the 11-digit octal size field holds.
const USTAR_SIZE_MAX: u64 = 0o77_777_777_777;
const CHECK_SIGNALS_EVERY: usize = 256;

/// One entry to write, before sorting.
struct Planned {
    /// Byte order of the tar path, except that an opaque marker sorts right
    /// after its directory: a reader that empties the directory when it meets
    /// the marker must not remove entries of this same layer.
    key: Vec<u8>,
    path: Vec<u8>,
    what: What,
}

enum What {
    Entry(Metadata),
    Whiteout,
}

impl Layout {
    /// Write the layer holding `changes` (sorted or not) of `tree`.
    pub fn write_layer(
        &self,
        tree: &Path,
        changes: &[Change],
        opts: &LayerOptions,
    ) -> Result<WrittenLayer> {
        let plan = plan(tree, changes)?;
        let root = self.root();
        let compressor = opts
            .compression
            .writer(self.blob_writer()?)
            .map_err(LayoutError::io("write layer into", root))?;
        let mut tar = TarWriter {
            out: Hashing::new(compressor),
            clamp: opts.source_date_epoch,
            links: HashMap::new(),
            entries: 0,
            layout: root.to_path_buf(),
        };
        for item in &plan {
            if tar.entries.is_multiple_of(CHECK_SIGNALS_EVERY) {
                crate::signals::check().map_err(|_| LayoutError::Interrupted)?;
            }
            tar.write_item(tree, item)?;
        }
        let entries = tar.entries;
        let mut out = tar.out;
        // Two zero blocks end a tar archive.
        out.write_all(&[0u8; 1024])
            .map_err(LayoutError::io("write layer into", root))?;
        let (compressor, diff_id, uncompressed_size) = out.finish();
        let blob = compressor
            .finish()
            .map_err(LayoutError::io("compress layer into", root))?;
        let descriptor = blob.finish(opts.compression.media_type())?;
        tracing::debug!(
            layer = %descriptor.digest(),
            diff_id = %diff_id,
            entries,
            bytes = descriptor.size(),
            uncompressed = uncompressed_size,
            "wrote layer"
        );
        Ok(WrittenLayer {
            descriptor,
            diff_id,
            entries,
        })
    }
}

fn plan(tree: &Path, changes: &[Change]) -> Result<Vec<Planned>> {
    let mut plan = Vec::with_capacity(changes.len());
    for change in changes {
        let rel = change.path();
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(LayoutError::Invalid {
                what: format!("change {}", rel.display()),
                message: "a change names a relative path inside the tree".to_string(),
            });
        }
        let rel_bytes = rel.as_os_str().as_bytes();
        match change {
            Change::Write(_) => {
                let name = rel.file_name().map_or(&[][..], |n| n.as_bytes());
                if LayerName::of(name) != LayerName::Entry {
                    // Any reader (genoci's own included) would take it for a
                    // whiteout and delete lower files: refuse, as umoci does.
                    return Err(LayoutError::Invalid {
                        what: format!("/{}", rel.display()),
                        message: "a name starting with .wh. cannot be stored in an OCI layer \
                                  (readers take it for a whiteout)"
                            .to_string(),
                    });
                }
                let full = tree.join(rel);
                let meta = fs::symlink_metadata(&full).map_err(LayoutError::io("stat", &full))?;
                if meta.file_type().is_socket() {
                    tracing::debug!(path = %rel.display(), "socket left out of the layer");
                    continue;
                }
                let mut path = rel_bytes.to_vec();
                if meta.is_dir() {
                    path.push(b'/');
                }
                plan.push(Planned {
                    key: path.clone(),
                    path,
                    what: What::Entry(meta),
                });
            }
            Change::Delete(_) => {
                let path = change::whiteout_path(rel);
                plan.push(Planned {
                    key: path.clone(),
                    path,
                    what: What::Whiteout,
                });
            }
            Change::Opaque(_) => {
                let mut key = rel_bytes.to_vec();
                key.extend_from_slice(b"/\0");
                plan.push(Planned {
                    key,
                    path: change::opaque_path(rel),
                    what: What::Whiteout,
                });
            }
        }
    }
    plan.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(plan)
}

struct TarWriter {
    out: Hashing<Compressor<BlobWriter>>,
    clamp: Option<i64>,
    /// First tar path written for each multiply-linked inode.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: usize,
    /// Where the layer is written, for messages: a write that fails (a full
    /// disk) is about the layout, not the tree being read.
    layout: PathBuf,
}

impl TarWriter {
    fn mtime(&self, secs: i64) -> i64 {
        self.clamp.map_or(secs, |c| secs.min(c))
    }

    fn write_item(&mut self, tree: &Path, item: &Planned) -> Result<()> {
        let meta = match &item.what {
            What::Whiteout => {
                let mut h = Header::new_ustar();
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0);
                h.set_uid(0);
                h.set_gid(0);
                h.set_size(0);
                h.set_mtime(self.clamp.unwrap_or(0).max(0) as u64);
                return self.append(tree, h, &item.path, None, Vec::new(), None);
            }
            What::Entry(meta) => meta,
        };
        let rel = Path::new(std::ffi::OsStr::from_bytes(
            item.path.strip_suffix(b"/").unwrap_or(&item.path),
        ));
        let full = tree.join(rel);
        let mut h = Header::new_ustar();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid().into());
        h.set_gid(meta.gid().into());
        let mtime = self.mtime(meta.mtime());
        // The header field is unsigned: a date before 1970 goes in a PAX
        // record (the header says 0 for readers that ignore it).
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(0);
        if !meta.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                h.set_entry_type(EntryType::Link);
                let first = first.clone();
                return self.append(tree, h, &item.path, Some(first), Vec::new(), None);
            }
            self.links.insert(key, item.path.clone());
        }
        let link_name = set_type(&mut h, meta, &full)?;
        let data = meta.is_file().then_some(meta.len());
        let mut pax = pax_overflow(meta, mtime, data);
        let xattrs = crate::xattr::list(&full).map_err(LayoutError::io("read xattrs", &full))?;
        for (name, value) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(&name);
            pax.push((key, value));
        }
        self.append(tree, h, &item.path, link_name, pax, data)
    }

    /// Write one entry: its PAX header if it needs one, its header, its data.
    fn append(
        &mut self,
        tree: &Path,
        mut h: Header,
        path: &[u8],
        link_name: Option<Vec<u8>>,
        mut pax: Vec<(Vec<u8>, Vec<u8>)>,
        data_len: Option<u64>,
    ) -> Result<()> {
        let layout = self.layout.clone();
        let err = |e| LayoutError::io("write layer into", &layout)(e);
        if path.len() > USTAR_NAME_MAX {
            pax.insert(0, (b"path".to_vec(), path.to_vec()));
        }
        set_field(&mut h.as_old_mut().name, path);
        if let Some(link) = &link_name {
            if link.len() > USTAR_NAME_MAX {
                pax.insert(0, (b"linkpath".to_vec(), link.clone()));
            }
            set_field(&mut h.as_old_mut().linkname, link);
        }
        if !pax.is_empty() {
            let records = pax_records(&pax);
            let mut ph = Header::new_ustar();
            ph.set_entry_type(EntryType::XHeader);
            ph.set_mode(0o644);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(h.mtime().unwrap_or(0));
            ph.set_size(records.len() as u64);
            let base = path
                .strip_suffix(b"/")
                .unwrap_or(path)
                .rsplit(|&b| b == b'/')
                .next()
                .unwrap_or(b"");
            let mut name = b"PaxHeaders/".to_vec();
            name.extend_from_slice(base);
            set_field(&mut ph.as_old_mut().name, &name);
            ph.set_cksum();
            self.out.write_all(ph.as_bytes()).map_err(err)?;
            self.out.write_all(&records).map_err(err)?;
            pad(&mut self.out, records.len() as u64).map_err(err)?;
        }
        h.set_cksum();
        self.out.write_all(h.as_bytes()).map_err(err)?;
        if let Some(len) = data_len {
            let rel = Path::new(std::ffi::OsStr::from_bytes(path));
            let full = tree.join(rel);
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&full)
                .map_err(LayoutError::io("open", &full))?;
            let copied = copy_data(file.take(len), &mut self.out, &full, &self.layout)?;
            if copied != len {
                return Err(LayoutError::Invalid {
                    what: full.display().to_string(),
                    message: format!("shrank from {len} to {copied} bytes while being read"),
                });
            }
            pad(&mut self.out, len).map_err(err)?;
        }
        self.entries += 1;
        Ok(())
    }
}

/// The entry type (and size, link target or device numbers) of the file
/// at `full`; the link target is returned for [`TarWriter::append`].
fn set_type(h: &mut Header, meta: &Metadata, full: &Path) -> Result<Option<Vec<u8>>> {
    let ft = meta.file_type();
    if ft.is_dir() {
        h.set_entry_type(EntryType::Directory);
    } else if ft.is_file() {
        h.set_entry_type(EntryType::Regular);
        h.set_size(meta.len());
    } else if ft.is_symlink() {
        h.set_entry_type(EntryType::Symlink);
        let target = fs::read_link(full).map_err(LayoutError::io("read link", full))?;
        return Ok(Some(target.as_os_str().as_bytes().to_vec()));
    } else if ft.is_char_device() || ft.is_block_device() {
        h.set_entry_type(if ft.is_char_device() {
            EntryType::Char
        } else {
            EntryType::Block
        });
        let rdev = meta.rdev();
        let encode = |set: io::Result<()>| set.map_err(LayoutError::io("encode device", full));
        encode(h.set_device_major(libc::major(rdev)))?;
        encode(h.set_device_minor(libc::minor(rdev)))?;
    } else if ft.is_fifo() {
        h.set_entry_type(EntryType::Fifo);
    }
    Ok(None)
}

/// PAX records for the values the ustar header cannot hold: a date before
/// 1970, ids over 7 octal digits, a size over 11.
fn pax_overflow(meta: &Metadata, mtime: i64, data: Option<u64>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut pax = Vec::new();
    if mtime < 0 {
        pax.push((b"mtime".to_vec(), mtime.to_string().into_bytes()));
    }
    if u64::from(meta.uid()) > USTAR_ID_MAX {
        pax.push((b"uid".to_vec(), meta.uid().to_string().into_bytes()));
    }
    if u64::from(meta.gid()) > USTAR_ID_MAX {
        pax.push((b"gid".to_vec(), meta.gid().to_string().into_bytes()));
    }
    if data.is_some_and(|size| size > USTAR_SIZE_MAX) {
        pax.push((b"size".to_vec(), meta.len().to_string().into_bytes()));
    }
    pax
}

/// Copy a file's data into the layer, telling a failed read of the file
/// from a failed write of the layer (`io::copy` reports both alike).
fn copy_data(mut from: impl Read, to: &mut impl Write, file: &Path, layout: &Path) -> Result<u64> {
    let mut buf = [0u8; 64 * 1024];
    let mut copied = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LayoutError::io("read", file)(e)),
        };
        to.write_all(&buf[..n])
            .map_err(LayoutError::io("write layer into", layout))?;
        copied += n as u64;
    }
}

/// Copy `value` into a NUL-padded header field, cut to its size (a PAX
/// record holds the whole value when it does not fit).
fn set_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    field[n..].fill(0);
}

/// PAX records `"<len> <key>=<value>\n"`, where `<len>` counts itself.
fn pax_records(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in pairs {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(key);
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

fn pad(w: &mut impl Write, len: u64) -> io::Result<()> {
    let rem = (len % 512) as usize;
    if rem != 0 {
        w.write_all(&[0u8; 512][..512 - rem])?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::driver::diff;
    use sha2::{Digest as _, Sha256};
    use std::collections::BTreeSet;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::PathBuf;

    use crate::test_support::all_paths;

    pub(crate) fn writes(root: &Path) -> Vec<Change> {
        all_paths(root).into_iter().map(Change::Write).collect()
    }

    fn set_time(path: &Path, secs: i64) {
        let t = filetime::FileTime::from_unix_time(secs, 0);
        filetime::set_symlink_file_times(path, t, t).unwrap();
    }

    /// A tree with one of everything a layer must carry.
    pub(crate) fn sample_tree(root: &Path, secs: i64) {
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("dev")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::chown(root.join("etc/passwd"), Some(1000), Some(1001)).unwrap();
        fs::set_permissions(root.join("etc/passwd"), fs::Permissions::from_mode(0o640)).unwrap();
        crate::xattr::set(&root.join("etc/passwd"), b"user.test", b"hello").unwrap();
        fs::write(root.join("bin/su"), vec![7u8; 70_000]).unwrap();
        fs::set_permissions(root.join("bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(root.join("bin/su"), root.join("bin/su2")).unwrap();
        symlink("../etc/passwd", root.join("bin/pw")).unwrap();
        nix::unistd::mkfifo(
            &root.join("dev/pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o620),
        )
        .unwrap();
        nix::sys::stat::mknod(
            &root.join("dev/null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            libc::makedev(1, 3),
        )
        .unwrap();
        let long_dir = root.join("d".repeat(80));
        fs::create_dir(&long_dir).unwrap();
        fs::write(long_dir.join("f".repeat(60)), "long").unwrap();
        symlink("t".repeat(150), root.join("longlink")).unwrap();
        fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o711)).unwrap();
        // Children first: setting a child's time does not touch its parent's.
        let mut paths: Vec<PathBuf> = all_paths(root).into_iter().collect();
        paths.reverse();
        for p in paths {
            set_time(&root.join(p), secs);
        }
    }

    fn layout(t: &Path) -> Layout {
        Layout::open_or_create(&t.join("oci")).unwrap()
    }

    #[test]
    fn a_layer_applied_to_an_empty_tree_reproduces_it() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        sample_tree(&src, 1_600_000_000);
        fs::create_dir(&dst).unwrap();
        let l = layout(t.path());
        let written = l
            .write_layer(&src, &writes(&src), &LayerOptions::default())
            .unwrap();
        assert_eq!(written.entries, all_paths(&src).len());
        l.apply_layer(&written.descriptor, &dst).unwrap();
        let candidates: BTreeSet<PathBuf> =
            all_paths(&src).union(&all_paths(&dst)).cloned().collect();
        assert_eq!(diff::compare(&src, &dst, &candidates).unwrap(), vec![]);
        let su = fs::metadata(dst.join("bin/su")).unwrap();
        let su2 = fs::metadata(dst.join("bin/su2")).unwrap();
        assert_eq!(su.ino(), su2.ino(), "hard links stay linked");
        assert_eq!(su.mode() & 0o7777, 0o4755);
        assert_eq!(
            crate::xattr::list(&dst.join("etc/passwd")).unwrap(),
            vec![(b"user.test".to_vec(), b"hello".to_vec())]
        );
    }

    #[test]
    fn the_tar_is_sorted_numeric_and_relative() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        sample_tree(&src, 1_600_000_000);
        let l = layout(t.path());
        let mut changes = writes(&src);
        changes.push(Change::Delete(PathBuf::from("etc/shadow")));
        changes.push(Change::Opaque(PathBuf::from("dev")));
        changes.reverse();
        let w = l
            .write_layer(
                &src,
                &changes,
                &LayerOptions {
                    compression: Compression::Gzip,
                    source_date_epoch: Some(1_500_000_000),
                },
            )
            .unwrap();
        let blob = l.read_blob(&w.descriptor).unwrap();
        assert_eq!(&blob[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(
            w.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&plain)))
        );
        let mut archive = tar::Archive::new(&plain[..]);
        let mut names = Vec::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert!(h.username_bytes().is_none_or(|u| u.is_empty()));
            assert!(h.groupname_bytes().is_none_or(|g| g.is_empty()));
            assert_eq!(h.mtime().unwrap(), 1_500_000_000);
            names.push(String::from_utf8(e.path_bytes().into_owned()).unwrap());
        }
        let dev = names.iter().position(|n| n == "dev/").unwrap();
        assert_eq!(names[dev + 1], "dev/.wh..wh..opq");
        assert!(names.contains(&"etc/.wh.shadow".to_string()));
        assert!(names.contains(&format!("{}/", "d".repeat(80))));
        assert!(names
            .iter()
            .all(|n| !n.starts_with('/') && !n.starts_with("./")));
        let mut sorted = names.clone();
        sorted.retain(|n| !n.ends_with(".wh..wh..opq"));
        let mut check = sorted.clone();
        check.sort();
        assert_eq!(sorted, check);
    }

    #[test]
    fn the_same_tree_gives_the_same_digests() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        sample_tree(&a, 1_600_000_000);
        sample_tree(&b, 1_700_000_000);
        let l = layout(t.path());
        for compression in [Compression::Gzip, Compression::Zstd] {
            let opts = LayerOptions {
                compression,
                source_date_epoch: None,
            };
            let one = l.write_layer(&a, &writes(&a), &opts).unwrap();
            let two = l.write_layer(&a, &writes(&a), &opts).unwrap();
            assert_eq!(one.descriptor, two.descriptor);
            let other = l.write_layer(&b, &writes(&b), &opts).unwrap();
            assert_ne!(one.diff_id, other.diff_id, "mtimes differ");
            let clamped = LayerOptions {
                compression,
                source_date_epoch: Some(1_000_000_000),
            };
            let ca = l.write_layer(&a, &writes(&a), &clamped).unwrap();
            let cb = l.write_layer(&b, &writes(&b), &clamped).unwrap();
            assert_eq!(ca.descriptor, cb.descriptor, "clamped mtimes agree");
            assert_eq!(ca.diff_id, cb.diff_id);
        }
    }

    #[test]
    fn whiteouts_and_opaque_dirs_apply_on_lower_layers() {
        let t = tempfile::tempdir().unwrap();
        let (base, next, dst) = (
            t.path().join("base"),
            t.path().join("next"),
            t.path().join("dst"),
        );
        for root in [&base, &next] {
            for d in ["a/sub", "b", "c"] {
                fs::create_dir_all(root.join(d)).unwrap();
            }
            for f in ["a/x", "a/sub/y", "b/z", "b/keep", "c/file"] {
                fs::write(root.join(f), f).unwrap();
            }
            // Layers keep whole seconds.
            let mut paths: Vec<PathBuf> = all_paths(root).into_iter().collect();
            paths.reverse();
            for p in paths {
                set_time(&root.join(p), 1_600_000_000);
            }
        }
        fs::create_dir(&dst).unwrap();
        let l = layout(t.path());
        let opts = LayerOptions::default();
        let lower = l.write_layer(&base, &writes(&base), &opts).unwrap();

        // The next tree: a/ emptied and refilled, b/z gone, c/ replaced by a file.
        fs::remove_dir_all(next.join("a")).unwrap();
        fs::create_dir_all(next.join("a/sub")).unwrap();
        fs::write(next.join("a/new"), "new").unwrap();
        fs::remove_file(next.join("b/z")).unwrap();
        fs::remove_dir_all(next.join("c")).unwrap();
        fs::write(next.join("c"), "now a file").unwrap();
        let mut paths: Vec<PathBuf> = all_paths(&next).into_iter().collect();
        paths.reverse();
        for p in paths {
            set_time(&next.join(p), 1_600_000_000);
        }
        let changes = vec![
            Change::Write("a".into()),
            Change::Write("a/new".into()),
            Change::Write("a/sub".into()),
            Change::Opaque("a".into()),
            Change::Write("b".into()),
            Change::Delete("b/z".into()),
            Change::Write("c".into()),
        ];
        let upper = l.write_layer(&next, &changes, &opts).unwrap();
        l.apply_layer(&lower.descriptor, &dst).unwrap();
        l.apply_layer(&upper.descriptor, &dst).unwrap();
        let candidates: BTreeSet<PathBuf> =
            all_paths(&next).union(&all_paths(&dst)).cloned().collect();
        assert_eq!(diff::compare(&next, &dst, &candidates).unwrap(), vec![]);
        assert!(!dst.join("a/x").exists());
        assert!(!dst.join("a/sub/y").exists());
        assert!(dst.join("b/keep").exists());
    }

    #[test]
    fn sockets_are_left_out() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
        fs::write(src.join("file"), "x").unwrap();
        let l = layout(t.path());
        let w = l
            .write_layer(&src, &writes(&src), &LayerOptions::default())
            .unwrap();
        assert_eq!(w.entries, 1);
    }

    #[test]
    fn names_that_look_like_whiteouts_are_refused_before_any_blob() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/.wh.keep"), "x").unwrap();
        let l = layout(t.path());
        let blobs = || fs::read_dir(l.root().join("blobs/sha256")).unwrap().count();
        let before = blobs();
        let err = l
            .write_layer(&src, &writes(&src), &LayerOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("/d/.wh.keep"), "{err}");
        assert_eq!(blobs(), before);
    }

    #[test]
    fn dates_before_1970_and_xattrs_with_newlines_survive_a_layer() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        fs::write(src.join("old"), "x").unwrap();
        crate::xattr::set(&src.join("old"), b"user.nl", b"a\n\nb").unwrap();
        crate::xattr::set(&src.join("old"), b"user.empty", b"").unwrap();
        set_time(&src.join("old"), -86_400);
        let l = layout(t.path());
        let w = l
            .write_layer(&src, &writes(&src), &LayerOptions::default())
            .unwrap();
        l.apply_layer(&w.descriptor, &dst).unwrap();
        assert_eq!(fs::metadata(dst.join("old")).unwrap().mtime(), -86_400);
        assert_eq!(
            crate::xattr::list(&dst.join("old")).unwrap(),
            vec![
                (b"user.empty".to_vec(), Vec::new()),
                (b"user.nl".to_vec(), b"a\n\nb".to_vec())
            ]
        );
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        // 4 + 1 + 5 + 93 + 1 = 104 bytes only if the prefix has three digits.
        let rec = pax_records(&[(b"path".to_vec(), vec![b'a'; 93])]);
        let text = String::from_utf8(rec.clone()).unwrap();
        let (len, _) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rec.len());
        let rec = pax_records(&[(b"k".to_vec(), vec![b'v'; 3])]);
        assert_eq!(rec, b"8 k=vvv\n");
    }
}

/// The layout as other tools see it: umoci, oci-image-tool and skopeo must
/// accept what we write. Each tool missing here is skipped (`test_support::skip`).
#[cfg(test)]
mod interop {
    use super::tests::{sample_tree, writes};
    use super::*;
    use oci_spec::image::{HistoryBuilder, ImageConfiguration};
    use std::collections::BTreeMap;
    use std::process::Command;

    fn tool(name: &str) -> bool {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            crate::test_support::skip(&format!("{name} is not installed"));
        }
        found
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A two-layer image: the sample tree, then a layer with a whiteout and an opaque dir.
    fn image(l: &Layout, t: &Path, tag: &str, compression: Compression) {
        let src = t.join("src");
        if !src.exists() {
            sample_tree(&src, 1_600_000_000);
        }
        let opts = LayerOptions {
            compression,
            source_date_epoch: Some(1_600_000_000),
        };
        let lower = l.write_layer(&src, &writes(&src), &opts).unwrap();
        let upper = l
            .write_layer(
                &src,
                &[
                    Change::Write("bin".into()),
                    Change::Write("bin/su".into()),
                    Change::Delete("bin/pw".into()),
                    Change::Opaque("dev".into()),
                ],
                &opts,
            )
            .unwrap();
        let history = (0..2)
            .map(|_| {
                HistoryBuilder::default()
                    .created("2020-09-13T12:26:40Z")
                    .created_by("genoci test")
                    .build()
                    .unwrap()
            })
            .collect();
        let mut config: ImageConfiguration =
            crate::layout::image::tests::config(vec![lower.diff_id, upper.diff_id]);
        config.set_history(Some(history));
        config.set_created(Some("2020-09-13T12:26:40Z".to_string()));
        let manifest = l
            .write_image(
                &config,
                vec![lower.descriptor, upper.descriptor],
                &BTreeMap::new(),
            )
            .unwrap();
        l.set_tags(&[(tag.into(), manifest)]).unwrap();
    }

    #[test]
    fn umoci_oci_image_tool_and_skopeo_accept_the_layout() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("oci");
        let l = Layout::open_or_create(&root).unwrap();
        image(&l, t.path(), "sample", Compression::Gzip);
        let dir = root.display().to_string();

        if tool("umoci") {
            let ls = run(Command::new("umoci").args(["ls", "--layout", &dir]));
            assert_eq!(ls.trim(), "sample");
            run(Command::new("umoci").args(["stat", "--image", &format!("{dir}:sample")]));
            let bundle = t.path().join("bundle");
            run(Command::new("umoci").args([
                "unpack",
                "--image",
                &format!("{dir}:sample"),
                bundle.to_str().unwrap(),
            ]));
            let rootfs = bundle.join("rootfs");
            assert!(rootfs.join("bin/su").is_file());
            assert!(fs::symlink_metadata(rootfs.join("bin/pw")).is_err());
            assert_eq!(fs::read_dir(rootfs.join("dev")).unwrap().count(), 0);
        }
        if tool("oci-image-tool") {
            // This version has no `imageLayout` type; `image` checks the
            // layout, the index, the manifest, the config and the layers.
            run(Command::new("oci-image-tool").args([
                "validate",
                "--type",
                "image",
                "--ref",
                "name=sample",
                &dir,
            ]));
        }
        if tool("tar") {
            let image = l.image_by_tag("sample").unwrap();
            let layer = l.descriptor_path(&image.manifest.layers()[0]).unwrap();
            let listing = run(Command::new("tar").arg("-tvzf").arg(&layer));
            assert!(listing.contains(&format!("{}/{}", "d".repeat(80), "f".repeat(60))));
            assert!(listing.contains(&format!("longlink -> {}", "t".repeat(150))));
            assert!(listing.contains("1000/1001"));
            assert!(listing.contains("bin/su2 link to bin/su"));
        }
        // Debian's umoci 0.4.7 and oci-image-tool 1.0.0-rc1 predate zstd layers.
        image(&l, t.path(), "sample-zstd", Compression::Zstd);
        if tool("skopeo") {
            for tag in ["sample", "sample-zstd"] {
                run(Command::new("skopeo").args(["inspect", &format!("oci:{dir}:{tag}")]));
                let copy = t.path().join(format!("copy-{tag}"));
                run(Command::new("skopeo").args([
                    "copy",
                    &format!("oci:{dir}:{tag}"),
                    &format!("dir:{}", copy.display()),
                ]));
            }
        }
    }
}
