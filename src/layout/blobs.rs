//! Content-addressed blobs under `blobs/sha256/`, hashed while written.
//!
//! API (implemented here):
//! - `Layout::blob_writer(&self) -> Result<BlobWriter>`; `BlobWriter: Write`;
//!   `BlobWriter::finish(self, media_type: MediaType) -> Result<Descriptor>` (fsync + rename; an
//!   existing identical blob is kept).
//! - `Layout::put_json<T: Serialize>(&self, media_type, &T) -> Result<Descriptor>` canonical bytes.
//! - `Layout::read_blob(&self, &Descriptor) -> Result<Vec<u8>>` verifying size and digest.
//! - `Layout::open_blob(&self, &Descriptor) -> Result<impl Read>` verifying the digest at EOF.
//! - `Layout::blob_path(&self, digest: &str) -> PathBuf`, `Layout::has_blob(&self, digest) -> bool`.
