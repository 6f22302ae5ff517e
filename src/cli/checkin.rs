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

    let existing: Vec<String> = session.layout.tags()?.into_iter().map(|(t, _)| t).collect();
    let tag = match &args.tag {
        Some(t) => {
            if let Some(problem) = crate::spec::plan::tag_name_problem(t) {
                anyhow::bail!("tag {t}: {problem}");
            }
            t.clone()
        }
        None => tags::next_checkin(&tags::today(), &existing),
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
            created_by: format!("genoci checkin {tag} (from {})", record.tag),
            created: commit::created(sde),
            layer: commit::layer_options(session.config.compression, sde),
        },
    )
    .context("checking in")?;
    session.layout.set_tags(&[(tag.clone(), manifest)])?;
    match layer {
        Some(l) => println!("{tag}: {} entries changed", l.entries),
        None => println!("{tag}: no changes"),
    }
    Ok(())
}
