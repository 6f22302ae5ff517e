//! The `expand` action: unpack a tarball (compression found by magic bytes)
//! into the root of the tree.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("expand {tarball}")]
pub struct ExpandError {
    pub tarball: PathBuf,
    #[source]
    pub source: crate::layout::LayoutError,
}

pub fn expand(tree: &Path, tarball: &Path) -> Result<(), ExpandError> {
    tracing::debug!(tarball = %tarball.display(), "expanding");
    crate::layout::unpack::extract_tarball(tarball, tree).map_err(|source| ExpandError {
        tarball: tarball.to_path_buf(),
        source,
    })
}
