use anyhow::{bail, Context};
use clap::Args;
use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};

use super::{Access, GlobalArgs, Session};
use crate::builder::ensure_snapshot;
use crate::driver::{worktree, Owner, SnapshotDriver, WorkTree};
use crate::layout::Layout;

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// The tag to check out
    pub tag: String,
}

/// What was checked out, kept in the work tree's own record in the store
/// (its owner's note): the tree and what it was checked out from cannot
/// part, and a checkout on another driver or for another layout has its
/// own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub tag: String,
    /// The image itself, by digest: its tag may move or go before checkin.
    pub manifest: Descriptor,
}

/// An open checkout: its tree and its record.
pub struct Checkout {
    pub tree: WorkTree,
    pub record: Record,
}

/// The layout as the owner of a checkout: its absolute path.
pub fn layout_owner(layout: &Layout) -> String {
    let root = layout.root();
    root.canonicalize()
        .unwrap_or_else(|_| root.to_path_buf())
        .display()
        .to_string()
}

/// The work tree name of `layout`'s checkout.
pub fn tree_name(layout: &Layout) -> String {
    worktree::checkout_name(&layout_owner(layout))
}

impl Record {
    /// The image that was checked out, whatever became of its tag (gc keeps
    /// it while the checkout is open).
    pub fn image(&self, layout: &Layout) -> anyhow::Result<crate::layout::image::Image> {
        layout.image(&self.manifest).with_context(|| {
            format!(
                "reading the image {} that was checked out ({})",
                self.tag,
                self.manifest.digest()
            )
        })
    }
}

/// `layout`'s checkout in `driver`'s store, if one is open.
pub fn open_checkout(
    layout: &Layout,
    driver: &dyn SnapshotDriver,
) -> anyhow::Result<Option<Checkout>> {
    let Some(tree) = driver.work_tree(&tree_name(layout))? else {
        return Ok(None);
    };
    let record = tree
        .owner
        .note
        .clone()
        .and_then(|note| serde_json::from_value::<Record>(note).ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the checkout at {} has no record of its image",
                tree.path.display()
            )
        })?;
    Ok(Some(Checkout { tree, record }))
}

/// The images of this layout's open checkouts, in the session's store and
/// in the other drivers' stores when they can be opened: `gc` must keep them.
pub fn open_images(session: &Session) -> anyhow::Result<Vec<Descriptor>> {
    let mut images = Vec::new();
    if let Some(c) = open_checkout(&session.layout, session.driver.as_ref())? {
        images.push(c.record.manifest);
    }
    use crate::config::DriverKind;
    for kind in [DriverKind::Plain, DriverKind::Overlay, DriverKind::Btrfs] {
        let mut other = session.config.clone();
        other.driver = kind;
        let exists = match kind {
            DriverKind::Plain => other.storedir.join("work").is_dir(),
            DriverKind::Overlay => other.storedir.join("overlay/work").is_dir(),
            DriverKind::Btrfs => other.btrfs_store().join("work").is_dir(),
            DriverKind::Auto => false,
        };
        if kind == session.config.driver || !exists {
            continue;
        }
        // A store that cannot be opened (a btrfs not mounted) has no checkout to keep.
        if let Ok(driver) = super::open_driver(&other) {
            if let Some(c) = open_checkout(&session.layout, driver.as_ref())? {
                images.push(c.record.manifest);
            }
        }
    }
    Ok(images)
}

pub fn run(g: &GlobalArgs, args: &CheckoutArgs) -> anyhow::Result<()> {
    let session = Session::open(g, Access::Use)?;
    let name = tree_name(&session.layout);
    if let Some(open) = session.driver.work_tree(&name)? {
        let what = open_checkout(&session.layout, session.driver.as_ref())
            .ok()
            .flatten()
            .map_or_else(|| "a tree".to_string(), |c| c.record.tag);
        bail!(
            "a checkout of {what} is in progress at {}: `genoci checkin` or `genoci abort` it first",
            open.path.display()
        );
    }
    let image = session.layout.image_by_tag(&args.tag)?;
    let chain = ensure_snapshot(&session.layout, session.driver.as_ref(), &image)?;
    let record = Record {
        tag: args.tag.clone(),
        manifest: image.manifest_desc.clone(),
    };
    let owner = Owner::layout_checkout(
        layout_owner(&session.layout),
        serde_json::to_value(&record)?,
    );
    let tree = session.driver.checkout_as(&chain, &name, &owner)?;
    println!("{}", tree.path.display());
    Ok(())
}
