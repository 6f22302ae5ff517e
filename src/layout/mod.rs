//! The OCI image layout: blobs, the index and its tags, manifests and
//! configs, layer tarballs, garbage collection and the lock.
//!
//! Every write goes to a temp file in the layout, is fsynced and renamed, so
//! a reader (or a crash) only ever sees whole blobs and a whole index.

pub mod blobs;
pub mod gc;
pub mod image;
pub mod index;
pub mod layer;
pub mod lock;
pub mod unpack;

use std::path::{Path, PathBuf};

pub use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest, MediaType};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    #[error("{0}")]
    Locked(String),
    #[error("interrupted")]
    Interrupted,
}

impl LayoutError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| LayoutError::Io { op, path, source }
    }
}

pub type Result<T, E = LayoutError> = std::result::Result<T, E>;

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Open the layout at `root`, creating an empty one if the folder does not exist or is empty.
    pub fn open_or_create(root: &Path) -> Result<Layout> {
        let _ = root;
        todo!()
    }

    /// Open an existing layout.
    pub fn open(root: &Path) -> Result<Layout> {
        let _ = root;
        todo!()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}
