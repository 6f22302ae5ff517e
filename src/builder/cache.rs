//! The build cache: a target whose base image, meaning and inputs are the
//! same as at its last build is not built again.
//!
//! The key hashes what decides the image, and nothing else: the base
//! manifest digest, the layer options, the target as the plan understood it
//! (not as it was spelled: key order, a one-item list written as a string
//! and the spec's or project's location do not count), and each input by
//! what its action carries into the image. A `copy` carries a tree's names,
//! types, modes, contents, link targets, device numbers, xattrs (file
//! capabilities among them), hard-link structure and mtimes (clamped as the
//! layer clamps them), but not its owners: copies are owned by root.
//! Tarballs, packages and scripts count by content (their digests are
//! remembered between builds: [`super::inputs`]).
//!
//! The key is kept on the index entry of the target's tag
//! ([`CACHE_KEY_ANNOTATION`]), so it lives and moves with the layout: two
//! layouts on one store keep their own, and a tag moved by anything else
//! has no key and is rebuilt.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use oci_spec::image::Descriptor;
use sha2::{Digest, Sha256};

use super::inputs::InputDigests;
use crate::spec::{Package, RunItem, Target};

/// The index annotation holding the cache key a tag's image was built for.
pub const CACHE_KEY_ANNOTATION: &str = "dev.genoci.cache-key";

/// The cache key recorded on an index entry, if any.
pub fn recorded_key(desc: &Descriptor) -> Option<&str> {
    desc.annotations()
        .as_ref()?
        .get(CACHE_KEY_ANNOTATION)
        .map(String::as_str)
}

/// `desc` with `key` recorded on it.
pub fn with_key(desc: &Descriptor, key: &str) -> Descriptor {
    let mut desc = desc.clone();
    let mut annotations = desc.annotations().clone().unwrap_or_default();
    annotations.insert(CACHE_KEY_ANNOTATION.to_string(), key.to_string());
    desc.set_annotations(Some(annotations));
    desc
}

/// The cache key of building `target` on `base_manifest` with `options`;
/// `clamp` is the `SOURCE_DATE_EPOCH` layer mtimes are clamped to.
pub fn key(
    base_manifest: &str,
    target: &Target,
    options: &str,
    clamp: Option<i64>,
    inputs: &InputDigests,
) -> io::Result<String> {
    let mut h = Sha256::new();
    for part in [base_manifest, &meaning(target), options] {
        put(&mut h, part.as_bytes());
    }
    let mut hasher = Hasher { h, clamp, inputs };
    for tarball in &target.expand {
        hasher.content(tarball)?;
    }
    for item in &target.copy {
        hasher.copied(&item.src)?;
    }
    for package in &target.install {
        if let Package::File(f) = package {
            hasher.content(f)?;
        }
    }
    for item in &target.run {
        if let RunItem::File(f) = item {
            hasher.h.update(fs::metadata(f)?.mode().to_le_bytes());
            hasher.content(f)?;
        }
    }
    Ok(format!("sha256:{}", hex::encode(hasher.h.finalize())))
}

/// The target as the plan resolved it, without what does not reach the
/// image: its name and line, its spelling, its base's tag (the base
/// manifest counts), and where its host files are (their contents are
/// hashed instead). A copied file keeps its own name
/// when DEST is a directory, so that name stays.
fn meaning(target: &Target) -> String {
    let mut t = target.clone();
    t.name.clear();
    t.line = 0;
    t.stanza.clear();
    let blank = |p: &mut std::path::PathBuf| *p = std::path::PathBuf::new();
    t.expand.iter_mut().for_each(blank);
    for item in &mut t.copy {
        item.src = item.src.file_name().map(Into::into).unwrap_or_default();
    }
    for package in &mut t.install {
        if let Package::File(f) = package {
            blank(f);
        }
    }
    for item in &mut t.run {
        if let RunItem::File(f) = item {
            blank(f);
        }
    }
    // The base counts by its manifest digest, not by its tag's name.
    t.base = crate::spec::Base::Empty;
    // Labels, annotations, volumes and ports are maps or sets in the
    // image: their order is spelling.
    t.config.labels.sort_keys();
    t.config.annotations.sort_keys();
    for set in [&mut t.config.volumes, &mut t.config.ports] {
        set.sort();
        set.dedup();
    }
    format!("{t:?}")
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

struct Hasher<'a> {
    h: Sha256,
    clamp: Option<i64>,
    inputs: &'a InputDigests,
}

impl Hasher<'_> {
    /// A file by its bytes (through a symlink, as the action reads it),
    /// counted by their digest: remembered for an unchanged large file.
    fn content(&mut self, path: &Path) -> io::Result<()> {
        let (digest, len) = self.inputs.digest(path)?;
        self.h.update(len.to_le_bytes());
        self.h.update(digest);
        Ok(())
    }

    /// A copy SRC: followed if a symlink, as `copy` does. A directory's
    /// own metadata is not copied (its entries are merged into DEST).
    fn copied(&mut self, src: &Path) -> io::Result<()> {
        let src = fs::canonicalize(src)?;
        let mut links = HashMap::new();
        if fs::metadata(&src)?.is_dir() {
            self.h.update(b"dir");
            self.children(&src, Path::new(""), &mut links)
        } else {
            self.h.update(b"file");
            self.entry(&src, Path::new(""), &mut links)
        }
    }

    fn children(
        &mut self,
        dir: &Path,
        rel: &Path,
        links: &mut HashMap<(u64, u64), Vec<u8>>,
    ) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        self.h.update((names.len() as u64).to_le_bytes());
        for name in names {
            self.entry(&dir.join(&name), &rel.join(&name), links)?;
        }
        Ok(())
    }

    /// One copied entry, as the layer will hold it (owner aside: root).
    fn entry(
        &mut self,
        path: &Path,
        rel: &Path,
        links: &mut HashMap<(u64, u64), Vec<u8>>,
    ) -> io::Result<()> {
        let m = fs::symlink_metadata(path)?;
        let name = rel.as_os_str().as_encoded_bytes().to_vec();
        put(&mut self.h, &name);
        // The second name of an inode is a hard link in the copy and in the layer.
        if !m.is_dir() && m.nlink() > 1 {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                self.h.update(b"hardlink");
                put(&mut self.h, first);
                return Ok(());
            }
            links.insert((m.dev(), m.ino()), name);
        }
        self.h.update(m.mode().to_le_bytes());
        let mtime = self.clamp.map_or(m.mtime(), |c| m.mtime().min(c));
        self.h.update(mtime.to_le_bytes());
        let mut xattrs = crate::xattr::list(path)?;
        xattrs.sort();
        self.h.update((xattrs.len() as u64).to_le_bytes());
        for (k, v) in &xattrs {
            put(&mut self.h, k);
            put(&mut self.h, v);
        }
        let ft = m.file_type();
        if ft.is_symlink() {
            put(
                &mut self.h,
                fs::read_link(path)?.as_os_str().as_encoded_bytes(),
            );
        } else if ft.is_dir() {
            self.children(path, rel, links)?;
        } else if ft.is_file() {
            self.content(path)?;
        } else {
            // Devices by number; fifos and sockets by type (in the mode).
            self.h.update(m.rdev().to_le_bytes());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The key of target `app` of `spec`, written in `dir`.
    fn key_of(dir: &Path, spec: &str, clamp: Option<i64>) -> String {
        let file = dir.join("s.yaml");
        fs::write(&file, spec).unwrap();
        let plan = crate::spec::load(&file, &|_| false).unwrap();
        key(
            "base",
            &plan.targets[0],
            "opts",
            clamp,
            &InputDigests::in_memory(),
        )
        .unwrap()
    }

    const SPEC: &str = "app:\n  base: empty\n  copy: ./d /srv\n  env:\n    A: \"1\"\n";

    #[test]
    fn the_key_follows_what_a_copy_carries() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("a"), "1").unwrap();
        fs::write(d.join("sub/b"), "1").unwrap();
        let k = || key_of(t.path(), SPEC, None);
        let mut seen = vec![k()];
        assert_eq!(k(), seen[0], "stable");
        let changed = |what: &str, seen: &mut Vec<String>| {
            let now = k();
            assert!(!seen.contains(&now), "{what} did not change the key");
            seen.push(now);
        };
        fs::write(d.join("a"), "2").unwrap();
        changed("content", &mut seen);
        fs::set_permissions(d.join("a"), fs::Permissions::from_mode(0o700)).unwrap();
        changed("mode", &mut seen);
        crate::xattr::set(&d.join("a"), b"user.k", b"v").unwrap();
        changed("an xattr", &mut seen);
        fs::remove_file(d.join("sub/b")).unwrap();
        fs::hard_link(d.join("a"), d.join("sub/b")).unwrap();
        changed("a hard link", &mut seen);
        filetime::set_file_mtime(d.join("a"), filetime::FileTime::from_unix_time(5, 0)).unwrap();
        changed("an mtime", &mut seen);
        fs::write(d.join("c"), "").unwrap();
        changed("a new file", &mut seen);
        // Copies are owned by root: the host owner is not carried.
        let before = k();
        std::os::unix::fs::lchown(d.join("a"), Some(4321), Some(4321)).ok();
        assert_eq!(k(), before);
        // mtimes past the clamp are the clamp in the layer.
        let at = |secs| {
            filetime::set_file_mtime(d.join("c"), filetime::FileTime::from_unix_time(secs, 0))
                .unwrap();
            key_of(t.path(), SPEC, Some(1000))
        };
        assert_eq!(at(2000), at(3000));
        assert_ne!(at(500), at(600));
    }

    #[test]
    fn the_key_follows_meaning_not_spelling_or_place() {
        let t = tempfile::tempdir().unwrap();
        for dir in ["one", "two"] {
            fs::create_dir_all(t.path().join(dir).join("d")).unwrap();
            fs::write(t.path().join(dir).join("d/a"), "1").unwrap();
        }
        let k = key_of(&t.path().join("one"), SPEC, None);
        assert_eq!(k, key_of(&t.path().join("two"), SPEC, None), "the place");
        let respelled = "app:\n  env: {A: \"1\"}\n  copy:\n    - ./d /srv\n  base: empty\n";
        assert_eq!(k, key_of(&t.path().join("one"), respelled, None));
        let ports = |p: &str| {
            let spec = format!("app:\n  base: empty\n  copy: ./d /srv\n  ports: {p}\n");
            key_of(&t.path().join("one"), &spec, None)
        };
        assert_eq!(ports("[80, 443]"), ports("[443, 80, 80]"));
        assert_ne!(ports("[80]"), ports("[81]"));
        let other = "app:\n  base: empty\n  copy: ./d /opt\n  env:\n    A: \"1\"\n";
        assert_ne!(k, key_of(&t.path().join("one"), other, None));
    }
}
