//! Turning a filled work tree into an image: changes -> layer -> snapshot ->
//! config and manifest. Shared by `build` and `checkin`.

use oci_spec::image::{Descriptor, MediaType};

use super::{discard_after, image_config, BuildError};
use crate::driver::{SnapshotDriver, WorkTree};
use crate::layout::image::Image;
use crate::layout::layer::{LayerOptions, WrittenLayer};
use crate::layout::Compression;
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
        compression,
        source_date_epoch,
    }
}

/// `SOURCE_DATE_EPOCH` is set to something that is not a number of seconds.
#[derive(Debug, thiserror::Error)]
#[error("SOURCE_DATE_EPOCH={0:?} is not a number of seconds since 1970")]
pub struct BadSourceDateEpoch(pub String);

/// `SOURCE_DATE_EPOCH` from the environment (unset or empty: none). A value
/// that is not a number is an error: ignoring it would give a build that is
/// silently not reproducible.
pub fn source_date_epoch() -> Result<Option<i64>, BadSourceDateEpoch> {
    parse_source_date_epoch(std::env::var_os("SOURCE_DATE_EPOCH").as_deref())
}

fn parse_source_date_epoch(
    value: Option<&std::ffi::OsStr>,
) -> Result<Option<i64>, BadSourceDateEpoch> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| BadSourceDateEpoch(text.into_owned()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn source_date_epoch_is_a_number_or_an_error() {
        assert_eq!(parse_source_date_epoch(None).unwrap(), None);
        assert_eq!(parse_source_date_epoch(Some(OsStr::new(""))).unwrap(), None);
        assert_eq!(
            parse_source_date_epoch(Some(OsStr::new("1700000000"))).unwrap(),
            Some(1_700_000_000)
        );
        for bad in ["yesterday", "17e8", "1.5", " "] {
            assert!(
                parse_source_date_epoch(Some(OsStr::new(bad))).is_err(),
                "{bad:?}"
            );
        }
    }
}
