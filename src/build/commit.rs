//! Turning a filled work tree into an image: changes -> layer -> snapshot ->
//! config and manifest. Shared by `build` and `checkin`.

use oci_spec::image::{Descriptor, MediaType};

use super::{discard_after, image_config, BuildError};
use crate::config::Compression;
use crate::driver::{SnapshotDriver, WorkTree};
use crate::layout::image::Image;
use crate::layout::layer::{self, LayerOptions, WrittenLayer};
use crate::layout::Layout;
use crate::spec::ConfigKeys;

/// What the new image says about itself.
pub struct Commit<'a> {
    pub keys: &'a ConfigKeys,
    pub created_by: String,
    pub created: String,
    pub layer: LayerOptions,
}

/// Write `tree`'s layer (none if nothing changed), freeze it as the new
/// snapshot, and write the image on top of `base`. The tree is consumed
/// either way.
pub fn commit(
    layout: &Layout,
    driver: &dyn SnapshotDriver,
    tree: WorkTree,
    base: Option<&Image>,
    c: &Commit,
) -> Result<(Descriptor, Option<WrittenLayer>), BuildError> {
    let base_chain = tree.base.clone();
    let written = match write_layer(layout, driver, &tree, &c.layer) {
        Ok(w) => w,
        Err(e) => return Err(discard_after(driver, tree, e)),
    };
    match &written {
        Some(l) => driver.checkin(tree, &base_chain.push(&l.diff_id))?,
        None => driver.discard(tree)?,
    }

    let base_config = base.map_or_else(image_config::empty_config, |b| b.config.clone());
    let config = image_config::derive(
        &base_config,
        written.as_ref().map(|l| l.diff_id.as_str()),
        &c.created,
        c.created_by.clone(),
        c.keys,
    );
    let mut layers: Vec<Descriptor> = base.map_or_else(Vec::new, |b| b.manifest.layers().clone());
    layers.iter_mut().for_each(oci_layer_type);
    layers.extend(written.as_ref().map(|l| l.descriptor.clone()));
    let annotations =
        image_config::annotations(base.and_then(|b| b.manifest.annotations().as_ref()), c.keys);
    let manifest = layout.write_image(&config, layers, &annotations)?;
    Ok((manifest, written))
}

fn write_layer(
    layout: &Layout,
    driver: &dyn SnapshotDriver,
    tree: &WorkTree,
    opts: &LayerOptions,
) -> Result<Option<WrittenLayer>, BuildError> {
    let changes = driver.changes(tree)?;
    if changes.is_empty() {
        tracing::info!(tree = %tree.name, "no changes: no layer");
        return Ok(None);
    }
    Ok(Some(layout.write_layer(&tree.path, &changes, opts)?))
}

/// `created` for a new image: now to the nanosecond (as docker and buildah
/// write it, so images built within one second still sort), or the fixed
/// `SOURCE_DATE_EPOCH` in whole seconds.
pub fn created(source_date_epoch: Option<i64>) -> String {
    match source_date_epoch {
        Some(epoch) => chrono::DateTime::from_timestamp(epoch, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    }
}

pub fn layer_options(compression: Compression, source_date_epoch: Option<i64>) -> LayerOptions {
    LayerOptions {
        compression: match compression {
            Compression::Gzip => layer::Compression::Gzip,
            Compression::Zstd => layer::Compression::Zstd,
        },
        source_date_epoch,
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, if set to a number.
pub fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

/// Docker layer media types name the same bytes as the OCI ones; an OCI
/// manifest must use the OCI names.
fn oci_layer_type(desc: &mut Descriptor) {
    let oci = match desc.media_type().to_string().as_str() {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => MediaType::ImageLayerGzip,
        "application/vnd.docker.image.rootfs.diff.tar" => MediaType::ImageLayer,
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => MediaType::ImageLayerZstd,
        _ => return,
    };
    desc.set_media_type(oci);
}
