//! Unpacking tar streams into a tree without ever writing outside it:
//! layers (whiteouts and opaque markers applied) and plain tarballs for `expand`.
//!
//! API: `Layout::apply_layer(&self, layer: &Descriptor, tree: &Path) -> Result<()>` (media type or magic picks
//! gzip/zstd/plain), `pub fn extract_tarball(path: &Path, tree: &Path) -> Result<()>` (gzip, xz, bzip2,
//! zstd or plain by magic bytes; no whiteout handling), both keeping owners, modes, xattrs, hard links,
//! symlinks and device nodes.
