//! `index.json`: one manifest descriptor per tag, named by
//! `org.opencontainers.image.ref.name`.
//!
//! API: `Layout::tags(&self) -> Result<Vec<(String, Descriptor)>>` (sorted by name),
//! `Layout::resolve(&self, tag) -> Result<Option<Descriptor>>`,
//! `Layout::set_tags(&self, &[(String, Descriptor)]) -> Result<()>` (one atomic rewrite),
//! `Layout::remove_tags(&self, &[String]) -> Result<()>`.
