use anyhow::{anyhow, Context};
use clap::Args;

use super::checkout::open_checkout;
use super::{Access, GlobalArgs, Session};
use crate::builder::{commit, tags};
use crate::spec::ConfigKeys;

#[derive(Debug, Args)]
pub struct CheckinArgs {
    /// The new tag (default: YYYY-MM-DD_vN)
    pub tag: Option<String>,
}

pub fn run(g: &GlobalArgs, args: &CheckinArgs) -> anyhow::Result<()> {
    let sde = commit::source_date_epoch()?;
    let session = Session::open(g, Access::Use)?;
    let super::checkout::Checkout { tree, record } =
        open_checkout(&session.layout, session.driver.as_ref())?
            .ok_or_else(|| anyhow!("no checkout in progress: run `genoci checkout TAG` first"))?;
    let base = record.image(&session.layout)?;

    if let Some(t) = &args.tag {
        if let Some(problem) = crate::spec::plan::tag_name_problem(t) {
            anyhow::bail!("tag {t}: {problem}");
        }
    }
    // A default tag is picked under the index lock when the image is
    // tagged (below), so two checkins at once never pick the same one.
    let created_by = match &args.tag {
        Some(t) => format!("genoci checkin {t} (from {})", record.tag),
        None => format!("genoci checkin (from {})", record.tag),
    };
    for mount in crate::mountinfo::release_mounts_under(&tree.path, session.driver.tree_is_mount())?
    {
        tracing::warn!(mount = %mount.display(), "unmounted what was left mounted in the checkout");
    }
    let (manifest, layer) = commit::commit(
        &session.layout,
        session.driver.as_ref(),
        tree,
        Some(&base),
        &commit::Commit {
            keys: &ConfigKeys::default(),
            created_by,
            created: commit::created(sde),
            layer: commit::layer_options(session.config.compression, sde),
        },
    )
    .context("checking in")?;
    let today = tags::today();
    let set = session.layout.update_tags(|existing| {
        let tag = (args.tag.clone()).unwrap_or_else(|| tags::next_checkin(&today, existing));
        vec![(tag, manifest)]
    })?;
    let tag = &set[0].0;
    match layer {
        Some(l) => println!("{tag}: {} entries changed", l.entries),
        None => println!("{tag}: no changes"),
    }
    Ok(())
}
