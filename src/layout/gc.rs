//! Removing blobs that no tag reaches.
//!
//! API: `Layout::reachable_blobs(&self) -> Result<BTreeSet<String>>`, `Layout::gc(&self) -> Result<GcStats>`
//! with `pub struct GcStats { pub blobs: usize, pub bytes: u64 }`; also removes stale temp files.
