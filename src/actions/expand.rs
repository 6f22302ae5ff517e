//! The `expand` action: unpack a tarball (compression found by magic bytes)
//! into the root of the tree.

use std::path::Path;

use crate::layout::LayoutError;

/// The builder names the step (`expand TARBALL`) and the target.
pub fn expand(tree: &Path, tarball: &Path) -> Result<(), LayoutError> {
    tracing::debug!(tarball = %tarball.display(), "expanding");
    crate::layout::unpack::extract_tarball(tarball, tree)
}
