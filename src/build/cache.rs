//! The build cache: a target whose base image, stanza and input files are
//! the same as at its last build is not built again.
//!
//! The key hashes the base manifest digest, the stanza, the layer options
//! and every input file by path, type, mode, owner and content (directories
//! recursively, symlinks by target). One small JSON file per target in
//! `storedir/cache/` remembers the key and the manifest it gave.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    key: String,
    manifest: String,
}

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(storedir: &Path) -> Cache {
        Cache {
            dir: storedir.join("cache"),
        }
    }

    fn file(&self, target: &str) -> PathBuf {
        self.dir.join(format!("{target}.json"))
    }

    /// The manifest digest recorded for `target` under `key`, if any.
    pub fn lookup(&self, target: &str, key: &str) -> Option<String> {
        let bytes = fs::read(self.file(target)).ok()?;
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        (entry.key == key).then_some(entry.manifest)
    }

    pub fn record(&self, target: &str, key: &str, manifest: &str) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let entry = Entry {
            key: key.to_string(),
            manifest: manifest.to_string(),
        };
        let tmp = self.dir.join(format!(".{target}.json.tmp"));
        fs::write(
            &tmp,
            serde_json::to_vec(&entry).expect("cache entry serializes"),
        )?;
        fs::rename(&tmp, self.file(target))
    }
}

/// The cache key of a target build.
pub fn key(
    base_manifest: &str,
    stanza: &str,
    options: &str,
    inputs: &[PathBuf],
) -> io::Result<String> {
    let mut h = Sha256::new();
    for part in [base_manifest, stanza, options] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    for input in inputs {
        hash_path(&mut h, input, input, true)?;
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// `follow`: a named input may be read through its link (a tarball) or
/// copied as the link itself (a single copied file), so both the link and
/// what it points at count. Links inside a copied directory are copied as
/// links: their text counts.
fn hash_path(h: &mut Sha256, path: &Path, shown: &Path, follow: bool) -> io::Result<()> {
    let mut m = fs::symlink_metadata(path)?;
    if follow && m.file_type().is_symlink() {
        h.update(b"link");
        h.update(fs::read_link(path)?.as_os_str().as_encoded_bytes());
        m = fs::metadata(path)?;
    }
    let name = shown.as_os_str().as_encoded_bytes();
    h.update((name.len() as u64).to_le_bytes());
    h.update(name);
    h.update(m.mode().to_le_bytes());
    h.update(m.uid().to_le_bytes());
    h.update(m.gid().to_le_bytes());
    let ft = m.file_type();
    if ft.is_symlink() {
        h.update(fs::read_link(path)?.as_os_str().as_encoded_bytes());
    } else if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        h.update((names.len() as u64).to_le_bytes());
        for n in names {
            hash_path(h, &path.join(&n), Path::new(&n), false)?;
        }
    } else if ft.is_file() {
        h.update(m.len().to_le_bytes());
        let mut f = fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_changes_with_content_mode_and_membership() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("a"), "1").unwrap();
        let k = |_: ()| key("m", "s", "o", std::slice::from_ref(&dir)).unwrap();
        let k0 = k(());
        assert_eq!(k0, k(()));
        fs::write(dir.join("a"), "2").unwrap();
        let k1 = k(());
        assert_ne!(k0, k1);
        fs::set_permissions(dir.join("a"), fs::Permissions::from_mode(0o700)).unwrap();
        let k2 = k(());
        assert_ne!(k1, k2);
        fs::write(dir.join("b"), "").unwrap();
        let k3 = k(());
        assert_ne!(k2, k3);
        fs::remove_file(dir.join("b")).unwrap();
        assert_eq!(k(()), k2);
        assert_ne!(
            key("m2", "s", "o", &[]).unwrap(),
            key("m", "s", "o", &[]).unwrap()
        );
        assert_ne!(
            key("m", "s2", "o", &[]).unwrap(),
            key("m", "s", "o", &[]).unwrap()
        );
    }

    /// Bug: an input named through a symlink was hashed by the link's
    /// text, so a rewritten tarball behind `rootfs.tar.gz -> v1.tar.gz`
    /// kept the cached image.
    #[test]
    fn an_input_behind_a_symlink_is_hashed_by_its_content() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("v1.tar");
        let link = t.path().join("rootfs.tar");
        fs::write(&real, "one").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let k0 = key("m", "s", "o", std::slice::from_ref(&link)).unwrap();
        fs::write(&real, "two").unwrap();
        assert_ne!(k0, key("m", "s", "o", std::slice::from_ref(&link)).unwrap());

        // Inside a copied directory a link is copied as a link: its text counts.
        let dir = t.path().join("d");
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink("../v1.tar", dir.join("l")).unwrap();
        let k1 = key("m", "s", "o", std::slice::from_ref(&dir)).unwrap();
        fs::write(&real, "three").unwrap();
        assert_eq!(k1, key("m", "s", "o", std::slice::from_ref(&dir)).unwrap());
    }
}
