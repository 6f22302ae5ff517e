//! Manifests and configs, read (OCI or docker media types) and written with
//! `oci-spec` types in canonical bytes.
//! An image by tag or digest resolves an index (or a docker list) to the
//! entry for this machine's platform.

use std::collections::BTreeMap;

use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType,
};

use super::{Layout, LayoutError, Platform, Result};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Nested indexes deeper than this are refused (a loop of indexes cannot be
/// written, but a hostile layout could try a very deep chain).
const MAX_INDEX_DEPTH: usize = 8;

/// One image: its manifest (with the descriptor that names it) and its config.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest_desc: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
}

/// What a descriptor points at, across OCI and docker media types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Index,
    Manifest,
    Other,
}

pub(crate) fn kind(media_type: &MediaType) -> Kind {
    match media_type {
        MediaType::ImageIndex => Kind::Index,
        MediaType::ImageManifest => Kind::Manifest,
        MediaType::Other(t) if t == DOCKER_MANIFEST_LIST => Kind::Index,
        MediaType::Other(t) if t == DOCKER_MANIFEST => Kind::Manifest,
        _ => Kind::Other,
    }
}

impl Layout {
    /// The image a tag names.
    pub fn image_by_tag(&self, tag: &str) -> Result<Image> {
        let desc = self
            .resolve(tag)?
            .ok_or_else(|| LayoutError::NoTag(tag.to_string()))?;
        self.image(&desc)
    }

    /// The image `desc` names: a manifest, or an index (manifest list) from
    /// which the linux/amd64 manifest is taken.
    pub fn image(&self, desc: &Descriptor) -> Result<Image> {
        let mut desc = desc.clone();
        for _ in 0..MAX_INDEX_DEPTH {
            match kind(desc.media_type()) {
                Kind::Manifest => return self.read_manifest(desc),
                Kind::Index => desc = self.pick_platform(&desc)?,
                Kind::Other => {
                    return Err(LayoutError::Invalid {
                        what: format!("descriptor {}", desc.digest()),
                        message: format!("{} is not an image manifest", desc.media_type()),
                    })
                }
            }
        }
        Err(LayoutError::Invalid {
            what: format!("descriptor {}", desc.digest()),
            message: "image indexes nested too deep".to_string(),
        })
    }

    fn read_manifest(&self, manifest_desc: Descriptor) -> Result<Image> {
        let manifest: ImageManifest = self.read_json(&manifest_desc)?;
        let config_desc = manifest.config();
        match config_desc.media_type() {
            MediaType::ImageConfig => {}
            MediaType::Other(t) if t == DOCKER_CONFIG => {}
            other => {
                return Err(LayoutError::Invalid {
                    what: format!("manifest {}", manifest_desc.digest()),
                    message: format!("config media type {other} is not an image config"),
                })
            }
        }
        let config: ImageConfiguration = self.read_json(config_desc)?;
        Ok(Image {
            manifest_desc,
            manifest,
            config,
        })
    }

    fn pick_platform(&self, index_desc: &Descriptor) -> Result<Descriptor> {
        let index: ImageIndex = self.read_json(index_desc)?;
        let images: Vec<&Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| kind(d.media_type()) != Kind::Other)
            .collect();
        let machine = Platform::machine();
        let wanted = images
            .iter()
            .find(|d| d.platform().as_ref().is_some_and(|p| machine.matches(p)));
        match (wanted, images.as_slice()) {
            (Some(d), _) => Ok((*d).clone()),
            // A single image without a platform is what a one-image index means.
            (None, [only]) if only.platform().is_none() => Ok((*only).clone()),
            _ => Err(LayoutError::Invalid {
                what: format!("index {}", index_desc.digest()),
                message: format!("no {machine} image in it"),
            }),
        }
    }

    pub(crate) fn read_json<T: serde::de::DeserializeOwned>(&self, desc: &Descriptor) -> Result<T> {
        let bytes = self.read_blob(desc)?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
            what: format!("{} {}", desc.media_type(), desc.digest()),
            message: e.to_string(),
        })
    }

    /// Store the config, then a manifest over it and `layers`; the returned
    /// descriptor is what a tag points at.
    pub fn write_image(
        &self,
        config: &ImageConfiguration,
        layers: Vec<Descriptor>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Descriptor> {
        let config_desc = self.put_json(MediaType::ImageConfig, config)?;
        let mut builder = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_desc)
            .layers(layers);
        if !annotations.is_empty() {
            builder = builder.annotations(
                annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<std::collections::HashMap<_, _>>(),
            );
        }
        let manifest = builder.build().map_err(|e| LayoutError::Invalid {
            what: "image manifest".to_string(),
            message: e.to_string(),
        })?;
        let mut desc = self.put_json(MediaType::ImageManifest, &manifest)?;
        desc.set_platform(Some(Platform::of(config).to_oci()));
        tracing::debug!(manifest = %desc.digest(), layers = manifest.layers().len(), "wrote image");
        Ok(desc)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use oci_spec::image::{Arch, ConfigBuilder, ImageConfigurationBuilder, Os, RootFsBuilder};

    fn layout() -> (tempfile::TempDir, Layout) {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(&t.path().join("oci")).unwrap();
        (t, l)
    }

    pub(crate) fn config(diff_ids: Vec<String>) -> ImageConfiguration {
        ImageConfigurationBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .config(
                ConfigBuilder::default()
                    .labels(
                        [("b", "2"), ("a", "1"), ("c", "3")]
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect::<std::collections::HashMap<_, _>>(),
                    )
                    .build()
                    .unwrap(),
            )
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(diff_ids)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn write_then_read_an_image() {
        let (_t, l) = layout();
        let mut ann = BTreeMap::new();
        ann.insert("org.example".to_string(), "x".to_string());
        let desc = l.write_image(&config(vec![]), vec![], &ann).unwrap();
        assert_eq!(*desc.media_type(), MediaType::ImageManifest);
        let again = l.write_image(&config(vec![]), vec![], &ann).unwrap();
        assert_eq!(desc.digest(), again.digest(), "same content, same digest");
        let image = l.image(&desc).unwrap();
        assert_eq!(image.manifest.schema_version(), 2);
        assert_eq!(image.config.os(), &Os::Linux);
    }

    #[test]
    fn docker_media_types_and_manifest_lists_are_read() {
        let (_t, l) = layout();
        let config_json = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "container_config": {"Hostname": "x"},
            "rootfs": {"type": "layers", "diff_ids": []},
            "docker_version": "20.10"
        });
        let config_desc = l
            .put_json(MediaType::Other(DOCKER_CONFIG.into()), &config_json)
            .unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": config_desc.size(), "digest": config_desc.digest().to_string()},
            "layers": []
        });
        let manifest_desc = l
            .put_json(MediaType::Other(DOCKER_MANIFEST.into()), &manifest)
            .unwrap();
        // The image for another machine comes first; this machine's is taken.
        let foreign = serde_json::json!({"mediaType": DOCKER_MANIFEST, "size": 1,
            "digest": format!("sha256:{}", "0".repeat(64)),
            "platform": {"architecture": "mips64p32", "os": "linux"}});
        let list = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [foreign, {"mediaType": DOCKER_MANIFEST, "size": manifest_desc.size(),
                "digest": manifest_desc.digest().to_string(),
                "platform": Platform::machine().to_oci()}]
        });
        let list_desc = l
            .put_json(MediaType::Other(DOCKER_MANIFEST_LIST.into()), &list)
            .unwrap();
        l.set_tags(&[("docker".into(), list_desc)]).unwrap();
        let image = l.image_by_tag("docker").unwrap();
        assert_eq!(image.manifest_desc.digest(), manifest_desc.digest());
        assert_eq!(
            image
                .config
                .config()
                .as_ref()
                .unwrap()
                .env()
                .as_ref()
                .unwrap(),
            &vec!["PATH=/bin".to_string()]
        );
        assert!(matches!(l.image_by_tag("nope"), Err(LayoutError::NoTag(_))));
    }
}
