use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use oci_spec::image::Descriptor;

use super::{Access, GlobalArgs, Session};
use crate::builder::tags::{is_marked_dated, parse_dated};
use crate::driver::ChainId;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep every dated tag (by default only the newest of each name stays)
    #[arg(long)]
    pub keep_dated: bool,
}

/// Everything is read and checked first; nothing is removed unless the
/// whole layout could be read.
pub fn run(g: &GlobalArgs, args: &GcArgs) -> anyhow::Result<()> {
    let session = Session::open(g, Access::Alone("gc"))?;
    let layout = &session.layout;
    let tags = layout.tags()?;
    let prune = if args.keep_dated {
        Vec::new()
    } else {
        older_dated(&tags)
    };
    let checkouts = super::checkout::open_images(&session)?;
    let plan = layout.gc_plan(&prune, &checkouts)?;
    let keep = snapshots_to_keep(&session, &plan.kept, &checkouts)?;

    let stats = layout.gc_apply(plan)?;
    if stats.tags > 0 {
        println!("removed {} older dated tags", stats.tags);
    }
    println!("removed {} blobs ({} bytes)", stats.blobs, stats.bytes);
    let mut removed = 0;
    for id in session.driver.snapshots()? {
        if !keep.contains(&id) {
            session.driver.remove(&id)?;
            removed += 1;
        }
    }
    println!("removed {removed} snapshots");
    Ok(())
}

/// Every prefix of every kept image's layers: they are the bases that the
/// next build or materialisation starts from; and the base of every open
/// work tree, whoever owns it. An entry that is not an image (an artifact,
/// an index with no linux/amd64 image) has no snapshots.
fn snapshots_to_keep(
    session: &Session,
    kept: &[Descriptor],
    checkouts: &[Descriptor],
) -> anyhow::Result<BTreeSet<ChainId>> {
    let mut keep: BTreeSet<ChainId> = BTreeSet::from([ChainId::empty()]);
    for desc in kept.iter().chain(checkouts) {
        match session.layout.image(desc) {
            Ok(image) => {
                let ids = image.config.rootfs().diff_ids();
                keep.extend((0..=ids.len()).map(|n| ChainId::of(&ids[..n])));
            }
            Err(e) => tracing::debug!(digest = %desc.digest(), "not an image, no snapshot: {e}"),
        }
    }
    keep.extend(session.driver.work_trees()?.into_iter().map(|t| t.base));
    Ok(keep)
}

/// Dated tags genoci made, other than the newest of each name.
fn older_dated(tags: &[(String, Descriptor)]) -> Vec<String> {
    let ours: Vec<&str> = tags
        .iter()
        .filter(|(_, d)| is_marked_dated(d))
        .map(|(t, _)| t.as_str())
        .collect();
    let mut newest: BTreeMap<&str, (&str, u32)> = BTreeMap::new();
    for tag in &ours {
        if let Some((name, when)) = parse_dated(tag) {
            let e = newest.entry(name).or_insert(when);
            *e = (*e).max(when);
        }
    }
    ours.iter()
        .filter(|t| parse_dated(t).is_some_and(|(name, when)| newest[name] != when))
        .map(|t| t.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::tags::mark_dated;
    use oci_spec::image::MediaType;

    #[test]
    fn keeps_the_newest_dated_tag_of_each_name_and_every_tag_not_ours() {
        let desc = Descriptor::new(
            MediaType::ImageManifest,
            1,
            crate::layout::blobs::sha256_digest(&"ab".repeat(32)),
        );
        let ours = mark_dated(&desc);
        let tags: Vec<(String, Descriptor)> = [
            ("a", &desc),
            ("a-2026-01-01_3", &ours),
            ("a-2026-01-02_1", &ours),
            ("a-2026-01-02_2", &ours),
            ("a-2025-01-01_1", &desc),
            ("b-2026-01-01_1", &ours),
        ]
        .iter()
        .map(|(t, d)| (t.to_string(), (*d).clone()))
        .collect();
        assert_eq!(older_dated(&tags), vec!["a-2026-01-01_3", "a-2026-01-02_1"]);
    }
}
