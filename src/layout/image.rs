//! Manifests and configs, read (OCI or docker media types) and written with
//! `oci-spec` types in canonical bytes.
//!
//! API: `pub struct Image { pub manifest_desc: Descriptor, pub manifest: ImageManifest, pub config: ImageConfiguration }`,
//! `Layout::image(&self, manifest: &Descriptor) -> Result<Image>` (resolves an index/list to linux/amd64),
//! `Layout::write_image(&self, config: &ImageConfiguration, layers: Vec<Descriptor>, annotations: &BTreeMap<String,String>) -> Result<Descriptor>`.
