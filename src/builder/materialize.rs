//! Making sure an image's tree is in the store: a tag built elsewhere (a
//! fresh store, an image put in the layout by skopeo) is rebuilt from its
//! layers on top of the nearest snapshot already there.

use crate::driver::{ChainId, SnapshotDriver};
use crate::layout::image::Image;
use crate::layout::Layout;

use super::BuildError;

/// The ChainID of `image`'s tree, present in the store on return.
pub fn ensure_snapshot(
    layout: &Layout,
    driver: &dyn SnapshotDriver,
    image: &Image,
) -> Result<ChainId, BuildError> {
    let diff_ids = image.config.rootfs().diff_ids();
    let layers = image.manifest.layers();
    if diff_ids.len() != layers.len() {
        return Err(BuildError::Image(format!(
            "image {} has {} layers but {} diff_ids",
            image.manifest_desc.digest(),
            layers.len(),
            diff_ids.len()
        )));
    }
    let chains: Vec<ChainId> = (0..=diff_ids.len())
        .map(|n| ChainId::of(&diff_ids[..n]))
        .collect();
    let mut present = chains.len() - 1;
    while present > 0 && !driver.exists(&chains[present])? {
        present -= 1;
    }
    for n in present..layers.len() {
        let layer = &layers[n];
        tracing::info!(layer = %layer.digest(), "materialising layer {} of {}", n + 1, layers.len());
        // Named by process: another genoci sharing the store may be
        // materialising the same layer; both succeed (equal ChainIDs make
        // a lost commit race a success). A tree of this name left by a dead
        // process with the same pid is cleared first.
        let name = format!(
            "materialize-{}-{}",
            std::process::id(),
            &chains[n + 1].store_name()[..12]
        );
        if let Some(stale) = driver.work_tree(&name)?.filter(|t| t.is_abandoned()) {
            driver.discard(stale)?;
        }
        let tree = driver.checkout(&chains[n], &name)?;
        if let Err(e) = layout.apply_layer(layer, &tree.path) {
            return Err(discard_after(driver, tree, BuildError::Layout(e)));
        }
        driver.checkin(tree, &chains[n + 1])?;
    }
    Ok(chains[layers.len()].clone())
}

/// Discard a work tree after `err`; if that fails too, report both.
pub fn discard_after(
    driver: &dyn SnapshotDriver,
    tree: crate::driver::WorkTree,
    err: BuildError,
) -> BuildError {
    let path = tree.path.clone();
    match driver.discard(tree) {
        Ok(()) => err,
        Err(cleanup) => BuildError::Cleanup {
            first: Box::new(err),
            path,
            cleanup,
        },
    }
}
