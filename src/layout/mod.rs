//! The OCI image layout: blobs, the index and its tags, manifests and
//! configs, layer tarballs and garbage collection.
//!
//! Every write goes to a temp file in the layout, is fsynced and renamed, so
//! a reader (or a crash) only ever sees whole blobs and a whole index.

pub mod blobs;
pub mod compress;
pub mod gc;
pub mod image;
pub mod index;
pub mod layer;
pub mod platform;
pub mod unpack;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{ImageIndex, MediaType, OciLayout, OciLayoutBuilder};
use serde::Serialize;

use crate::io_error::IoError;
use crate::lock::{Lock, Mode, Subject, Wait};

pub use compress::Compression;
pub use platform::Platform;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{0} is not an OCI image layout (no oci-layout file)")]
    NotALayout(PathBuf),
    #[error("blob {digest}: expected {expected}, found {found}")]
    Corrupt {
        digest: String,
        expected: String,
        found: String,
    },
    #[error("blob {0} is missing from the layout")]
    MissingBlob(String),
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("tag {0} is not in the layout")]
    NoTag(String),
    #[error("unsafe entry {entry:?} in {archive}: {reason}")]
    UnsafeEntry {
        archive: String,
        entry: String,
        reason: String,
    },
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("interrupted")]
    Interrupted,
}

impl LayoutError {
    /// [`IoError::at`], as a layout error.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let at = IoError::at(op, path);
        move |source| at(source).into()
    }
}

pub type Result<T, E = LayoutError> = std::result::Result<T, E>;

const OCI_LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
/// Temp files live in the layout root so that renaming them into place never
/// crosses a filesystem; `gc` removes the ones a killed process left.
pub(crate) const TEMP_PREFIX: &str = ".genoci-tmp-";

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Open the layout at `root`, creating an empty one if the folder does not exist or is empty.
    pub fn open_or_create(root: &Path) -> Result<Layout> {
        if root.join(OCI_LAYOUT_FILE).exists() {
            return Layout::open(root);
        }
        fs::create_dir_all(root).map_err(LayoutError::io("create directory", root))?;
        // Another genoci may be making the same layout at this moment: one
        // makes it, the other then finds it made.
        let _lock = index::index_lock(root)?;
        if root.join(OCI_LAYOUT_FILE).exists() {
            return Layout::open(root);
        }
        let mut entries = fs::read_dir(root).map_err(LayoutError::io("read directory", root))?;
        if entries.next().is_some() {
            return Err(LayoutError::NotALayout(root.to_path_buf()));
        }
        let layout = Layout {
            root: root.to_path_buf(),
        };
        let blobs = layout.blobs_dir();
        fs::create_dir_all(&blobs).map_err(LayoutError::io("create directory", &blobs))?;
        layout.write_index(&empty_index())?;
        let header = OciLayoutBuilder::default()
            .image_layout_version("1.0.0")
            .build()
            .map_err(|e| layout.invalid(OCI_LAYOUT_FILE, e))?;
        // Written last: a folder with an `oci-layout` file is a whole layout.
        layout.write_file_atomic(OCI_LAYOUT_FILE, &canonical_json(&header)?)?;
        tracing::debug!(layout = %root.display(), "created OCI layout");
        Ok(layout)
    }

    /// Open an existing layout.
    pub fn open(root: &Path) -> Result<Layout> {
        let header_path = root.join(OCI_LAYOUT_FILE);
        let bytes = match fs::read(&header_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LayoutError::NotALayout(root.to_path_buf()))
            }
            Err(e) => return Err(LayoutError::io("read", header_path)(e)),
        };
        let header: OciLayout =
            serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
                what: header_path.display().to_string(),
                message: e.to_string(),
            })?;
        if !header.image_layout_version().starts_with("1.") {
            return Err(LayoutError::Invalid {
                what: header_path.display().to_string(),
                message: format!(
                    "unsupported imageLayoutVersion {}",
                    header.image_layout_version()
                ),
            });
        }
        let layout = Layout {
            root: root.to_path_buf(),
        };
        // skopeo and umoci always create it, an empty layout copied around may lack it.
        let blobs = layout.blobs_dir();
        fs::create_dir_all(&blobs).map_err(LayoutError::io("create directory", &blobs))?;
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Hold the layout for a whole command: `Shared` by every command that
    /// reads or adds blobs, `Exclusive` by gc, which must not remove a blob
    /// a build has written and not tagged yet. The lock is on `blobs/`
    /// (behind the gate `blobs/sha256/`), as the layout's own directory
    /// carries the short index lock.
    pub fn hold(&self, mode: Mode, wait: Wait, why: &str) -> Result<Lock> {
        let subject = Subject {
            what: format!("the layout {}", self.root.display()),
            why: why.to_string(),
        };
        Ok(crate::lock::acquire_fair(
            &self.root.join("blobs"),
            &self.blobs_dir(),
            mode,
            wait,
            &subject,
        )?)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn invalid(&self, what: &str, message: impl std::fmt::Display) -> LayoutError {
        LayoutError::Invalid {
            what: self.root.join(what).display().to_string(),
            message: message.to_string(),
        }
    }

    /// A new, empty temp file in the layout root.
    fn temp_file(&self) -> Result<(File, PathBuf)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self
                .root
                .join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((f, path)),
                // Left by an earlier process with the same pid.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(LayoutError::io("create", path)(e)),
            }
        }
    }

    /// Replace `name` (relative to the root) with `bytes`: temp file, fsync, rename, fsync dir.
    fn write_file_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let (mut file, tmp) = self.temp_file()?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(LayoutError::io("write", &tmp));
        drop(file);
        let dest = self.root.join(name);
        let renamed = written.and_then(|()| {
            fs::rename(&tmp, &dest).map_err(LayoutError::io("rename into place", &dest))
        });
        if let Err(e) = renamed {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.root)
    }
}

/// Make a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(LayoutError::io("fsync directory", dir))
}

/// Equal content gives equal bytes: oci-spec keeps annotations and labels in
/// HashMaps, whose order changes from run to run; a `serde_json::Value` keeps
/// its keys sorted.
fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let invalid = |e: serde_json::Error| LayoutError::Invalid {
        what: "JSON document".to_string(),
        message: e.to_string(),
    };
    let value = serde_json::to_value(value).map_err(invalid)?;
    serde_json::to_vec(&value).map_err(invalid)
}

fn empty_index() -> ImageIndex {
    let mut index = ImageIndex::default();
    index.set_schema_version(2);
    index.set_media_type(Some(MediaType::ImageIndex));
    index.set_manifests(Vec::new());
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_open() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("oci");
        let layout = Layout::open_or_create(&root).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        assert!(root.join("blobs/sha256").is_dir());
        assert!(layout.tags().unwrap().is_empty());
        Layout::open(&root).unwrap();
        Layout::open_or_create(&root).unwrap();
        let leftovers: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_foreign_folder_is_not_a_layout() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("something"), "x").unwrap();
        assert!(matches!(
            Layout::open_or_create(t.path()),
            Err(LayoutError::NotALayout(_))
        ));
        assert!(matches!(
            Layout::open(&t.path().join("nothing")),
            Err(LayoutError::NotALayout(_))
        ));
    }

    #[test]
    fn canonical_json_sorts_map_keys() {
        let mut m = std::collections::HashMap::new();
        for k in ["z", "a", "m", "b", "y"] {
            m.insert(k.to_string(), 1);
        }
        assert_eq!(
            canonical_json(&m).unwrap(),
            br#"{"a":1,"b":1,"m":1,"y":1,"z":1}"#
        );
    }
}
