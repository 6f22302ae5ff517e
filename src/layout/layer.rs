//! Writing a layer from a tree and its change set: deterministic tar
//! (sorted, numeric owners, PAX for long names and xattrs, whiteouts),
//! compressed with gzip (no name, no time) or zstd, hashed while written.
//!
//! API: `pub enum Compression { Gzip, Zstd }`,
//! `pub struct LayerOptions { pub compression: Compression, pub source_date_epoch: Option<i64> }`,
//! `pub struct WrittenLayer { pub descriptor: Descriptor, pub diff_id: String, pub entries: usize, pub uncompressed_size: u64 }`,
//! `Layout::write_layer(&self, tree: &Path, changes: &[crate::driver::Change], opts: &LayerOptions) -> Result<WrittenLayer>`.
