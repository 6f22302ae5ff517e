use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{GlobalArgs, Session, CHECKOUT};
use crate::build::ensure_snapshot;

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// The tag to check out
    pub tag: String,
}

/// What was checked out, kept in the store beside the work tree.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub tag: String,
    pub manifest: String,
}

fn record_path(storedir: &Path) -> PathBuf {
    storedir.join("checkout.json")
}

impl Record {
    pub fn load(storedir: &Path) -> anyhow::Result<Option<Record>> {
        let path = record_path(storedir);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, storedir: &Path) -> anyhow::Result<()> {
        let path = record_path(storedir);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The image that was checked out (by digest: its tag may have moved since).
    pub fn image(&self, session: &Session) -> anyhow::Result<crate::layout::image::Image> {
        let desc = session
            .layout
            .tags()?
            .into_iter()
            .map(|(_, d)| d)
            .find(|d| d.digest().to_string() == self.manifest)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the image {} that was checked out ({}) is no longer tagged",
                    self.tag,
                    self.manifest
                )
            })?;
        Ok(session.layout.image(&desc)?)
    }

    pub fn clear(storedir: &Path) -> anyhow::Result<()> {
        let path = record_path(storedir);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

pub fn run(g: &GlobalArgs, args: &CheckoutArgs) -> anyhow::Result<()> {
    let session = Session::open(g)?;
    if let Some(open) = session.driver.work_tree(CHECKOUT)? {
        let what =
            Record::load(&session.config.storedir)?.map_or_else(|| "a tree".to_string(), |r| r.tag);
        bail!(
            "a checkout of {what} is in progress at {}: `genoci checkin` or `genoci abort` it first",
            open.path.display()
        );
    }
    let image = session.layout.image_by_tag(&args.tag)?;
    let chain = ensure_snapshot(&session.layout, session.driver.as_ref(), &image)?;
    let tree = session.driver.checkout(&chain, CHECKOUT)?;
    Record {
        tag: args.tag.clone(),
        manifest: image.manifest_desc.digest().to_string(),
    }
    .save(&session.config.storedir)?;
    println!("{}", tree.path.display());
    Ok(())
}
